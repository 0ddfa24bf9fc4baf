"""Autotuning of ``bell_matmul``: backend and tile sizes per problem, and the block
size per dense problem, chosen from measured timings and recorded in the autotune cache
(``kernels.autotune_cache``: file location, keys, atomic writes).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernels.autotune_cache import block_key, problem_key, store, update_cache
from kernels.block_ell import BlockELL, check_block_size
from kernels.config import KernelConfig, available_backends, platform
from kernels.ops import bell_matmul, bell_matmul_parts
from kernels.prune import keep_per_row

__all__ = [
    "candidates",
    "measure_ms",
    "random_balanced",
    "tune",
    "tune_block_size",
]


def candidates(plat: str, dtype: Any, block: int) -> list[KernelConfig]:
    """Configurations worth timing on ``plat`` for (dtype, b)."""
    avail = available_backends(plat, dtype, block)
    out: list[KernelConfig] = []
    if plat == "cpu":
        out += [KernelConfig("xla_scatter", chunk_m=c) for c in (64, 128, 256)]
        out += [KernelConfig("xla_gather", chunk_m=c) for c in (128, 256)]
        out.append(KernelConfig("xla_dense"))
        return out
    if "pallas_mosaic" in avail:
        out += [KernelConfig("pallas_mosaic", block_m=bm, max_concurrent_steps=s)
                for bm in (64, 128, 256) for s in (3, 4, 5)]
    for name in ("pallas_triton", "triton"):
        if name in avail:
            out += [KernelConfig(name, block_m=bm, num_warps=w, num_stages=s)
                    for bm in (32, 64, 128, 256) for w in (4, 8) for s in (2, 3)]
    if "pallas_tpu" in avail:
        out += [KernelConfig("pallas_tpu", block_m=bm) for bm in (128, 256, 512)]
    out += [KernelConfig("xla_scatter", chunk_m=2048), KernelConfig("xla_dense")]
    return out


def measure_ms(fn: Callable[..., Any], *args, warmup: int = 1, iters: int = 5) -> float:
    """Median time of ``fn(*args)`` in ms: device span from a profiler trace on a GPU
    (``kernels.devtime``; a host clock there adds 0.4-0.8 ms of synchronisation per
    call on the machines measured), else wall time around ``block_until_ready``."""
    if platform() == "gpu":
        from kernels.devtime import device_times

        t = device_times(fn, [args], calls=max(iters, 8), warmup=max(warmup, 2))
        if t is not None:
            return t["span_ms"]
    for _ in range(max(warmup, 1)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def tune(x: jax.Array, w: BlockELL, *, configs: Iterable[KernelConfig] | None = None,
         iters: int = 5, path: Path | None = None, save: bool = True
         ) -> tuple[KernelConfig, dict[str, float]]:
    """Times ``bell_matmul(x, w)`` for each config and caches the fastest.

    Configs that fail to compile or run are skipped (recorded as ``inf``).
    Returns (best config, {config json: ms}).
    """
    x2 = x.reshape(-1, w.shape[0])
    configs = list(configs) if configs is not None else candidates(
        platform(), x.dtype, w.block)
    if not configs:
        raise ValueError("configs is empty")
    timings: dict[str, float] = {}
    best, best_ms = None, float("inf")
    for cfg in configs:
        fn = jax.jit(lambda a, v, c, cfg=cfg: bell_matmul_parts(a, v, c, w.meta, config=cfg))
        try:
            ms = measure_ms(fn, x2, w.values, w.col_idx, iters=iters)
        except Exception as err:  # a config the compiler rejects is just not a candidate
            warnings.warn(f"autotune: {cfg} failed ({type(err).__name__}: {err})",
                          RuntimeWarning, stacklevel=2)
            ms = float("inf")
        timings[json.dumps(cfg.to_dict(), sort_keys=True)] = ms
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError("autotune: every configuration failed")
    if save:
        store(problem_key(x2.shape[0], w.meta, w.slots, x.dtype), best, best_ms,
              timings, path)
    return best, timings


def random_balanced(k: int, n: int, block: int, sparsity: float, dtype: Any = jnp.float32,
                    seed: int = 0) -> BlockELL:
    """Random balanced Block-ELL W [k, n] at ``sparsity`` (benchmarks, tuning)."""
    block = check_block_size(block)
    rng = np.random.default_rng(seed)
    r_blocks, c_blocks = -(-k // block), -(-n // block)
    keep = keep_per_row(c_blocks, sparsity)
    mask = np.zeros((r_blocks, c_blocks), bool)
    for r in range(r_blocks):
        mask[r, rng.choice(c_blocks, keep, replace=False)] = True
    slots = keep
    col_idx = np.full((r_blocks, slots), -1, np.int32)
    for r in range(r_blocks):
        col_idx[r] = np.flatnonzero(mask[r])
    values = (rng.standard_normal((r_blocks, slots, block, block)) / np.sqrt(k))
    return BlockELL.from_parts(jnp.asarray(values, dtype), col_idx, (k, n), block)


def tune_block_size(m: int, k: int, n: int, sparsity: float, dtype: Any = jnp.float32, *,
                    blocks: Iterable[int] = (16, 32, 64, 128), iters: int = 3,
                    tune_configs: bool = False, path: Path | None = None,
                    save: bool = True) -> tuple[int, dict[int, float]]:
    """Picks the block size with the fastest ``bell_matmul`` for X [m, k] @ W [k, n]
    at ``sparsity`` (random balanced pattern), caching it on disk.

    With ``tune_configs`` each block size is itself autotuned (slower); otherwise
    the default/cached config is used.
    """
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), dtype)
    timings: dict[int, float] = {}
    for b in blocks:
        w = random_balanced(k, n, b, sparsity, dtype)
        if tune_configs:
            _, t = tune(x, w, iters=iters, path=path, save=save)
            timings[b] = min(t.values())
        else:
            fn = jax.jit(lambda a, v, c, w=w: bell_matmul(a, BlockELL(v, c, w.meta)))
            timings[b] = measure_ms(fn, x, w.values, w.col_idx, iters=iters)
    best = min(timings, key=timings.__getitem__)
    if save:
        def update(data):
            data["blocks"][block_key(m, k, n, sparsity, dtype)] = {
                "block": int(best), "ms": timings[best],
                "timings": {str(b): t for b, t in timings.items()}}
        update_cache(update, path)
    return best, timings
