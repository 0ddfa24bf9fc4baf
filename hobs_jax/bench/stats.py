"""Statistics of timed calls and the agreement measure of the verification step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def latency_stats(rounds: Sequence[Sequence[float]], batch: int) -> dict:
    """Summary of per-call latencies (ms) collected over interleaved rounds.

    Args:
      rounds: one list of per-call milliseconds per round (rounds alternate with the
        other configurations being compared).
      batch: examples per call (for the throughput).
    Returns:
      ``p50_ms, p95_ms, p99_ms, mean_ms, std_ms, min_ms`` over every timed call pooled,
      ``best_ms`` (the smallest per-round median: the quietest round), ``throughput_ips``
      (examples per second at the p50) and ``samples``.
    """
    calls = np.asarray([t for r in rounds for t in r], np.float64)
    if calls.size == 0:
        raise ValueError("latency_stats: no timed calls")
    if not np.all(np.isfinite(calls)) or np.any(calls < 0):
        raise ValueError("latency_stats: timings must be finite and >= 0 ms")
    p50, p95, p99 = (float(np.percentile(calls, q)) for q in (50, 95, 99))
    medians = [float(np.median(r)) for r in rounds if len(r)]
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(calls.mean()),
            "std_ms": float(calls.std(ddof=1)) if calls.size > 1 else 0.0,
            "min_ms": float(calls.min()), "best_ms": min(medians),
            "throughput_ips": batch * 1e3 / p50 if p50 > 0 else math.inf,
            "samples": int(calls.size)}


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """``max|y - ref| / max|ref|`` (the parity/ measure: scale-free, robust to outputs
    that are near zero). Shapes must match (one-line error otherwise)."""
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"output shape {y.shape} differs from Flax's {ref.shape}")
    if not np.all(np.isfinite(y)):
        return math.inf
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(y - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def split_iters(iters: int, rounds: int) -> int:
    """Timed calls per configuration and round so that ``rounds`` rounds give at least
    ``iters`` calls."""
    return max(1, -(-iters // rounds))
