"""Latency budgets closed by measurement: allocate against the latency table, time the
pruned network in the runtime it is served by, and correct the budget asked of the table
until the measured time lands on the target.

A latency table predicts a network's time as the sum of its layers timed alone plus the
rest of the dense network (:mod:`hobs_jax.allocation.latency`). That prediction misses
what layers timed alone cannot see: on ResNet-56 in ONNX Runtime at batch 64 the table
put the aligned half-MACs network at 0.698 of dense where it ran at 0.758, so a 2x budget
measured 1.59x (docs/results/aligned_allocation.md). NetAdapt (Yang et al., ECCV 2018)
avoids the error by measuring candidate networks directly; here the table still ranks
channels (cheap, per channel), and measurement only corrects the one number the allocator
is given, the kept time fraction ``asked``:

    measured_k = time(pruned at asked_k) / time(dense)          (one interleaved timing)
    asked_1    = target
    asked_2    = asked_1 * target / measured_1                  (the table's error, as a ratio)
    asked_k+1  = the secant through the last two (log asked, log measured) points,
                 its slope clipped to [0.25, 4] (a non-positive slope, timing noise,
                 falls back to the ratio correction)

stopping when ``|measured / target - 1| <= tol`` or after ``rounds`` measurements; the
result is the round whose measurement is closest to the target (in log ratio). Each round
costs one allocation (cheap once H-OBS has selected) and one timing of dense and pruned.

The loop knows nothing about pruning or runtimes: ``allocate(asked)`` returns a candidate
(raising :class:`ValueError` when the table cannot reach ``asked``) and ``measure(candidate)``
returns its measured time fraction. ``benchmarks/aligned_allocation.py`` rows
``LABEL=latency:RUNTIME:TARGET:QUANTUM:measured`` use it with ``hobs_jax.bench`` timing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

SLOPE_RANGE = (0.25, 4.0)
TOLERANCE = 0.04  # relative distance to the target at which the loop stops (every caller's default)


@dataclasses.dataclass(frozen=True)
class Round:
    """One allocation of the loop: the kept time fraction asked of the table and the one
    measured (``measured`` None when the table could not reach ``asked``: ``error``)."""

    asked: float
    measured: float | None
    error: str = ""


@dataclasses.dataclass
class Result:
    """The candidate whose measured fraction is closest to ``target``, its round, every
    round in order, and the tolerance ``met`` is judged by."""

    target: float
    candidate: Any
    best: Round
    rounds: list[Round]
    tol: float = TOLERANCE

    @property
    def met(self) -> bool:
        return self.best.measured is not None and abs(self.best.measured / self.target - 1) <= self.tol

    def to_dict(self) -> dict:
        return {"target": self.target, "tol": self.tol, "asked": self.best.asked, "measured": self.best.measured,
                "met": self.met, "rounds": [dataclasses.asdict(r) for r in self.rounds]}


def next_asked(target: float, rounds: list[Round], lo: float, hi: float) -> float:
    """The next fraction to ask (module doc): a ratio correction after one measurement, the
    secant in log-log space (slope clipped to SLOPE_RANGE; the ratio correction again when
    it is not positive) after two with distinct asks; clipped to [lo, hi]."""
    done = [(r.asked, r.measured) for r in rounds if r.measured is not None]
    if not done:
        raise ValueError("next_asked: no measured round to correct from")
    a1, m1 = done[-1]
    prev = next(((a, m) for a, m in reversed(done[:-1]) if abs(math.log(a / a1)) > 1e-9), None)
    slope = 1.0
    if prev is not None:
        a0, m0 = prev
        raw = math.log(m1 / m0) / math.log(a1 / a0)
        # A non-positive slope is timing noise (asking less never makes a network slower):
        # fall back to the ratio correction rather than step by the clipped extreme.
        slope = min(max(raw, SLOPE_RANGE[0]), SLOPE_RANGE[1]) if raw > 0 else 1.0
    asked = a1 * math.exp(math.log(target / m1) / slope)
    return min(max(asked, lo), hi)


def meet_measured(allocate: Callable[[float], Any], measure: Callable[[Any], float], target: float, *,
                  tol: float = TOLERANCE, rounds: int = 4, lo: float = 0.02, hi: float = 1.0,
                  log: Callable[[str], None] | None = None) -> Result:
    """Allocate at a kept time fraction ``target`` in (0, 1] and correct the fraction asked
    of the table until the measured one is within ``tol`` (relative) of it (module doc).

    Args:
      allocate: ``asked -> candidate``; a ``ValueError`` marks ``asked`` unreachable (the
        loop then asks halfway back toward the last reachable fraction).
      measure: ``candidate -> measured time fraction`` (pruned / dense, > 0).
      rounds: at most this many measured allocations (>= 1); asks the table cannot reach
        cost no timing and are tried at most twice as often.
      lo, hi: the range ``asked`` is kept in.

    Raises ``ValueError`` (one line) for a bad target, tolerance or round count, a
    non-positive measurement, or when no round could be allocated.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target={target!r}: a kept time fraction must be in (0, 1]")
    if not 0.0 < tol < 1.0 or rounds < 1:
        raise ValueError(f"tol={tol!r} must be in (0, 1) and rounds={rounds!r} >= 1")
    history: list[Round] = []
    best: tuple[float, Round, Any] | None = None
    asked = min(max(target, lo), hi)
    measured = 0
    for _ in range(3 * rounds):  # unreachable asks cost no timing; they count apart, up to 2 per timing
        if measured == rounds:
            break
        try:
            cand = allocate(asked)
        except ValueError as e:
            history.append(Round(asked, None, str(e).split("\n")[0]))
            reachable = [r.asked for r in history if r.measured is not None]
            if not reachable:
                asked = min(hi, asked * 1.25)
                continue
            if abs(asked / reachable[-1] - 1) < 0.01:  # the table's floor is here: nothing lower to ask
                break
            asked = 0.5 * (asked + reachable[-1])
            continue
        measured += 1
        m = float(measure(cand))
        if not m > 0.0:
            raise ValueError(f"measure returned {m!r} for asked={asked:.4f}: a time fraction must be > 0")
        r = Round(asked, m)
        history.append(r)
        if log is not None:
            log(f"latency feedback: asked {asked:.4f} of the table's time, measured {m:.4f} (target {target:.4f})")
        err = abs(math.log(m / target))
        if best is None or err < best[0]:
            best = (err, r, cand)
        if abs(m / target - 1.0) <= tol:
            break
        asked = next_asked(target, history, lo, hi)
    if best is None:
        raise ValueError(f"latency feedback: no allocation reached; last: {history[-1].error}")
    return Result(target, best[2], best[1], history, tol=tol)


__all__ = ["TOLERANCE", "Result", "Round", "meet_measured", "next_asked"]
