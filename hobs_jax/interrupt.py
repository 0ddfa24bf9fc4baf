"""Stop signals (SIGTERM, SIGINT) handled at safe points, so a stopped job resumes.

What sends them: SLURM before a time limit (``--signal=TERM@120``) and on preemption,
preemptible cloud VMs, Kubernetes, ``kill``, and a user's Ctrl-C. Inside
``with stop_signals():`` the first of these signals only sets a flag and prints one line;
the code polls the flag at *safe points*, where it saves what it has and raises
:class:`Interrupted`:

  * between training steps (:func:`hobs_jax.train.fit` saves a checkpoint of the
    current step and returns with ``metrics['stopped'] == 'preempted'``; the pipeline
    stage that called it then raises);
  * between calibration batches (:func:`hobs_jax.stats.collect_hessians`; nothing to
    save: the statistics are recomputed);
  * between R-SPAR episodes (the search saves its checkpoint first);
  * between pipeline stages (a stage that returned is complete and is recorded first).

A stage with no safe point inside (evaluate, benchmark, export) runs to its end before
the flag is seen. A second signal raises :class:`Interrupted` at once, wherever the main
thread is: every file the pipeline writes is written to a temporary name and renamed
into place, so even that leaves the workdir resumable (like ``kill -9``).

``python -m hobs_jax.main`` exits with ``128 + signal number`` after an interruption
(143 for SIGTERM, 130 for SIGINT: what a shell reports for a process killed by that
signal; a scheduler that requeues on it resumes the job, see docs/reliability.md).

Scopes nest (``fit`` inside the pipeline's scope shares its flag); signal handlers can
only be installed from the main thread, so elsewhere a scope installs nothing and the
flag stays down.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []  # stop signals received in the current outermost scope
_depth = 0
_previous: dict[int, object] = {}


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the work (what was saved is said in ``where``).

    A ``KeyboardInterrupt`` (not an ``Exception``): ``except Exception`` clauses on the
    way up do not swallow it, and it carries the exit code the command line uses.
    """

    def __init__(self, signum: int, where: str = ""):
        super().__init__(signum, where)
        self.signum = int(signum)
        self.where = where

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}" + (f" {self.where}" if self.where else "")


def _handler(signum, frame) -> None:
    del frame
    first = not _received
    _received.append(signum)
    name = signal.Signals(signum).name
    if not first:
        raise Interrupted(signum, "(a second stop signal: stopped at once)")
    # os.write, not print/logging: a handler may run while the main thread is inside them.
    os.write(2, f"hobs_jax: {name} received: stopping at the next safe point and saving "
                f"(send it again to stop at once)\n".encode())


@contextlib.contextmanager
def stop_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Defer ``signals`` to safe points for the duration of the block (re-entrant).

    The outermost scope installs the handler (main thread only) and clears the flag on
    entry and on exit; inner scopes share the flag.
    """
    global _depth
    install = _depth == 0 and threading.current_thread() is threading.main_thread()
    if install:
        _received.clear()
        for s in signals:
            _previous[s] = signal.signal(s, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if install:
            for s, prev in _previous.items():
                signal.signal(s, prev)
            _previous.clear()
            _received.clear()


def deferring_signals(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`stop_signals` (for loops that poll
    :func:`requested` and save before stopping, also when called outside the pipeline)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with stop_signals():
            return fn(*args, **kwargs)
    return wrapper


def requested() -> bool:
    """Whether a stop signal arrived in the current scope."""
    return bool(_received)


def received() -> int | None:
    """The first stop signal of the current scope, or None."""
    return _received[0] if _received else None


def check(where: str = "") -> None:
    """A safe point: raise :class:`Interrupted` if a stop signal arrived."""
    if _received:
        raise Interrupted(_received[0], where)
