"""R-SPAR's latency budget: now the shared one of every allocator
(:mod:`hobs_jax.allocation.latency`: the table format, its checks, :class:`LatencyBudget`,
the cache; :mod:`hobs_jax.methods.latency_table`: which layer reads which group, and the
measurement in XLA or ONNX Runtime). The names R-SPAR's code, tests and benchmarks used
are kept here; :func:`measure_lut` is the XLA table at the network's widths."""

from __future__ import annotations

from hobs_jax.allocation.latency import VERSION, LatencyBudget, count_grid, device_string
from hobs_jax.methods.latency_table import layer_table, measure_table


def measure_lut(model, variables, input_shape, *, batch: int = 1, points: int = 4, reps: int = 5,
                progress: bool = True) -> dict:
    """The XLA latency table of a network at its widths (``reps`` timed calls per grid
    point and round, three rounds): :func:`hobs_jax.methods.latency_table.measure_table`."""
    del progress  # the layers are timed together in one worker process
    return measure_table(model, variables, input_shape, runtime="xla", batch=batch, points=points, iters=reps)


__all__ = ["VERSION", "LatencyBudget", "count_grid", "device_string", "layer_table", "measure_lut"]
