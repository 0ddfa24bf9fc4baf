"""SIGTERM / SIGINT -> save a checkpoint and leave cleanly (preemptible VMs, SLURM time
limits, Ctrl-C).

The handler (:mod:`hobs_jax.interrupt`) only sets a flag; the training loop polls
:meth:`Preemption.requested` once per step, then saves and returns. With several
processes the flag is OR-ed across them (one tiny all-gather per step) so that every
process stops at the same step, as the collective checkpoint save requires. Inside the
pipeline the flag is shared with the pipeline's own scope, so a signal that arrived
before training started stops it at its first step.
"""

from __future__ import annotations

import jax
import numpy as np

from hobs_jax import interrupt


class Preemption:
    """Context manager deferring stop signals to the loop's polls (main thread only).

    Args:
      signals: the signals to catch (default: SIGTERM and SIGINT).
    """

    def __init__(self, signals: tuple[int, ...] = interrupt.SIGNALS):
        self.signals = signals
        self._flag = False
        self._scope = None

    def __enter__(self) -> "Preemption":
        self._scope = interrupt.stop_signals(self.signals)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.__exit__(*exc)

    def request(self) -> None:
        """Asks for a stop as if a signal had arrived (tests, callbacks)."""
        self._flag = True

    def requested(self) -> bool:
        """Whether any process got a stop signal (collective when process_count > 1)."""
        flag = self._flag or interrupt.requested()
        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.array([flag], np.int32))
        return bool(np.asarray(flags).any())
