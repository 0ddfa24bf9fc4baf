"""Stage ``benchmark``: latency and throughput of the dense vs the pruned network on this
device, timed alternately in one run (so machine noise hits both alike)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.pipeline.config import batch_sizes
from hobs_jax.pipeline.context import Context
from hobs_jax.pipeline.evaluate_stage import final_stage


def _timer(model, variables, shape):
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    v = jax.device_put(variables)

    def once() -> float:
        t0 = time.perf_counter()
        fn(v, x).block_until_ready()
        return (time.perf_counter() - t0) * 1e3

    return once


def compare(dense, pruned, input_shape, sizes, warmup: int, iters: int, desc: str = "benchmark"):
    """Rows of {batch, dense_ms, pruned_ms, speedup, dense_ips, pruned_ips}: medians of
    ``iters`` alternating timings after ``warmup`` calls (compilation excluded)."""
    from hobs_jax.train import progress

    rows = []
    bar = progress(total=len(sizes) * iters, desc=desc)
    for b in sizes:
        shape = (b,) + tuple(input_shape[1:])
        td, tp = _timer(*dense, shape), _timer(*pruned, shape)
        for _ in range(max(1, warmup)):
            td(), tp()
        d_ms, p_ms = [], []
        for _ in range(iters):
            d_ms.append(td())
            p_ms.append(tp())
            bar.update(1)
        d, p = statistics.median(d_ms), statistics.median(p_ms)
        rows.append({"batch": b, "dense_ms": d, "pruned_ms": p, "speedup": d / p,
                     "dense_ips": b * 1e3 / d, "pruned_ips": b * 1e3 / p})
    bar.close()
    return rows


def run(ctx: Context) -> dict:
    c = ctx.config
    dense = ctx.load_model("train")[:2]
    stage = final_stage(ctx)
    if stage is None:
        return {"rows": [], "speedup": None, "note": "no pruned model (prune stage not run)"}
    pruned = ctx.load_model(stage)[:2]
    rows = compare(dense, pruned, ctx.input_shape, batch_sizes(c), c.benchmark.warmup,
                   c.benchmark.iters)
    return {"rows": rows, "speedup": rows[0]["speedup"],
            "throughput_speedup": rows[-1]["speedup"], "device": jax.devices()[0].device_kind}
