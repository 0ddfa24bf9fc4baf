"""SIGTERM -> save a checkpoint and leave cleanly (preemptible VMs, SLURM time limits).

The handler only sets a flag; the training loop polls :meth:`Preemption.requested` once
per step, then saves and returns. With several processes the flag is OR-ed across them
(one tiny all-gather per step) so that every process stops at the same step, as the
collective checkpoint save requires.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Preemption:
    """Context manager installing a SIGTERM handler (main thread only).

    Args:
      signals: the signals to catch (default: SIGTERM).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._flag = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        del frame
        self._flag = True

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        self._previous.clear()

    def request(self) -> None:
        """Asks for a stop as if a signal had arrived (tests, callbacks)."""
        self._flag = True

    def requested(self) -> bool:
        """Whether any process got a stop signal (collective when process_count > 1)."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.array([self._flag], np.int32))
        return bool(np.asarray(flags).any())
