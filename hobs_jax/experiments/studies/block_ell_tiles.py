"""GPU tile sweep of the Block-ELL kernels at 4096^3 bf16, b = 64 (device time).

Prints, per pattern ("random": row-balanced random, T about twice S at 90%;
"circulant": every block-column holds exactly S blocks) and sparsity, the device
span / busy time (``kernels.devtime``), the kernel count and a host-loop time of
dense ``jnp.dot`` and of ``bell_matmul_parts`` for a few Mosaic GPU and Triton
configurations (index derived in-graph), plus the Mosaic kernel alone on
precomputed operands; each product is checked against float32 (relative error).
The sweep behind the defaults in ``kernels/config.py``; GPU only.

    python benchmarks/block_ell_tiles.py --out /tmp   # writes /tmp/explore2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

M = K = N = 4096
B = 64
DTYPE = jnp.bfloat16


def circulant(k, n, b, s, seed):
    """A Block-ELL matrix whose every block-column holds exactly the same number of blocks."""
    from kernels.block_ell import BlockELL

    rb, cb = k // b, n // b
    keep = int(round(cb * (1 - s)))
    r_ = np.random.default_rng(seed)
    offs = np.sort(r_.choice(cb, keep, replace=False))
    col_idx = np.stack([np.sort((r + offs) % cb) for r in range(rb)]).astype(np.int32)
    vals = r_.standard_normal((rb, keep, b, b)) / np.sqrt(k)
    return BlockELL.from_parts(jnp.asarray(vals, DTYPE), col_idx, (k, n), b)


def run(res, xs, name, fn, extra, **info):
    """Device times and a host-loop time of ``fn`` over the inputs; appends a record."""
    from kernels.devtime import device_times

    try:
        t = device_times(fn, [(x, *extra) for x in xs], calls=16)
        t0, n = time.perf_counter(), 20
        for i in range(n):
            y = fn(xs[i % 4], *extra)
        jax.block_until_ready(y)
        wall = (time.perf_counter() - t0) * 1e3 / n
    except Exception as e:
        print(f"{name}: FAIL {type(e).__name__}: {str(e)[:400]}", flush=True)
        return None
    rec = dict(name=name, wall_loop_ms=wall, **(t or {}), **info)
    res.append(rec)
    print(f"{name:48s} span {rec.get('span_ms', float('nan')):.4f} busy {rec.get('busy_ms', float('nan')):.4f} "
          f"k={rec.get('kernels')} loop {wall:.4f}", flush=True)
    return y


def sweep(out: str) -> list[dict]:
    from kernels.autotune import random_balanced
    from kernels.config import KernelConfig
    from kernels.operands import forward_operands
    from kernels.ops import bell_matmul_parts
    from kernels.pallas_mosaic import mosaic_gather_spmm

    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal((M, K)), DTYPE) for _ in range(4)]
    res: list[dict] = []
    print(jax.devices(), flush=True)
    for pattern in ("random", "circulant"):
        for s in (0.9, 0.95, 0.75, 0.6, 0.5):
            w = random_balanced(K, N, B, s, DTYPE, seed=1) if pattern == "random" else circulant(K, N, B, s, 1)
            wd = w.todense()
            info = dict(pattern=pattern, s=s, S=w.slots, T=w.meta.col_slots)
            print(f"== {pattern} s={s} S={w.slots} T={w.meta.col_slots}", flush=True)
            run(res, xs, "dense", jax.jit(jnp.dot), (wd,), kind="dense", **info)
            ref = np.asarray(jnp.dot(xs[3].astype(jnp.float32), wd.astype(jnp.float32)))
            cfgs = [KernelConfig("pallas_mosaic", block_m=256, max_concurrent_steps=st) for st in (3, 4, 5)] + \
                   [KernelConfig("pallas_mosaic", block_m=128, max_concurrent_steps=4),
                    KernelConfig("triton", block_m=128, num_warps=8, num_stages=3),
                    KernelConfig("pallas_triton", block_m=128, num_warps=8, num_stages=3)]
            if s in (0.5, 0.95):
                cfgs = cfgs[:2] + cfgs[4:5]
            for cfg in cfgs:
                fn = jax.jit(lambda a, v, c, cfg=cfg: bell_matmul_parts(a, v, c, w.meta, config=cfg))  # noqa: B023 (called in this iteration)
                steps = cfg.max_concurrent_steps if cfg.backend == "pallas_mosaic" else cfg.num_stages
                y = run(res, xs, f"full {cfg.backend} bm{cfg.block_m} st{steps} w{cfg.num_warps}", fn,
                        (w.values, w.col_idx), kind="full", cfg=cfg.to_dict(), **info)
                if y is not None:
                    err = float(np.linalg.norm(np.asarray(y, np.float32) - ref) / np.linalg.norm(ref))
                    res[-1]["relerr"] = err
                    if not err < 2e-2:
                        print("   !!! relerr", err, flush=True)
            ops = jax.block_until_ready(jax.jit(lambda v, c: forward_operands(v, c, w.meta, zero_block=False))(  # noqa: B023 (called here)
                w.values, w.col_idx))
            fn = jax.jit(lambda a, o: mosaic_gather_spmm(a, o, block_m=256, max_concurrent_steps=4))
            run(res, xs, "kern mosaic bm256 st4 (prepared operands)", fn, (ops,), kind="kern", **info)
            with open(os.path.join(out, "explore2.json"), "w") as f:
                json.dump(res, f, indent=1)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="GPU tile sweep of the Block-ELL kernels (4096^3 bf16, b=64).")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="folder of explore2.json")
    a = p.parse_args(argv)
    if jax.default_backend() != "gpu":
        print(f"error: the tile sweep needs a GPU (JAX's backend is {jax.default_backend()!r})")
        return 2
    sweep(a.out)
    return 0
