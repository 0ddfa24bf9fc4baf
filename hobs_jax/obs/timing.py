"""The timing hook of the OBS engine: phase timers that report to listeners.

Every phase of an OBS computation (``calibration``, ``inverses``, ``selection``,
``compensation``, ``propagation``; the selection once per channel group, with facts
about the group) runs inside a :class:`Timer` phase. The timer sums wall seconds per
phase (what ``PruneOutcome.info['timings']`` reports) and process CPU seconds, and tells
every listener installed with :func:`listen` when a phase starts and ends. Benchmarks
measure through this hook (``benchmarks/hobs_cost.py`` per-group CPU time,
``benchmarks/hobs_compiles.py`` the phase each XLA compile falls in) instead of
replacing library internals.

    class Printer:
        def enter(self, phase, facts): ...
        def exit(self, phase, wall, cpu, facts): print(phase, facts, cpu)

    with hobs_jax.obs.listen(Printer()):
        methods.prune("hobs", ...)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

__all__ = ["PhaseListener", "Timer", "listen"]


class PhaseListener(Protocol):
    """Receives phase events; ``facts`` are the keyword arguments the phase was opened
    with (for ``selection``: group, size, removed, consumers, max_d)."""

    def enter(self, phase: str, facts: Mapping) -> None: ...

    def exit(self, phase: str, wall: float, cpu: float, facts: Mapping) -> None: ...


_LISTENERS: list[PhaseListener] = []
_LOCK = threading.Lock()


@contextlib.contextmanager
def listen(listener: PhaseListener) -> Iterator[PhaseListener]:
    """Install ``listener`` for every :class:`Timer` phase inside the block (all threads)."""
    with _LOCK:
        _LISTENERS.append(listener)
    try:
        yield listener
    finally:
        with _LOCK:
            _LISTENERS.remove(listener)


class Timer:
    """Per-phase wall (``times``) and process CPU (``cpu``) seconds, summed over the
    phase's occurrences; ``timer(phase, **facts)`` is a context manager."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str, **facts) -> Iterator[None]:
        listeners = list(_LISTENERS)
        for ls in listeners:
            ls.enter(phase, facts)
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            self.times[phase] = self.times.get(phase, 0.0) + wall
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu
            for ls in listeners:
                ls.exit(phase, wall, cpu, facts)

    def rounded(self, digits: int = 4) -> dict[str, float]:
        """``times`` rounded (for JSON reports)."""
        return {k: round(v, digits) for k, v in self.times.items()}
