"""``bell_matmul``: Y = X @ W for a Block-ELL W, one entry point for every backend,
with a ``jax.custom_vjp`` so Block-ELL layers can be fine-tuned.

Gradients (for Y = X W, cotangent dY):

* ``dX = dY @ W^T``: for block-row r of W, ``dX[:, r] = sum_s dY[:, col_idx[r,s]]
  @ values[r,s]^T``, the *balanced* gather form, computed with the same backend
  family as the forward (XLA gather form, or the Pallas / Triton gather kernel
  with ``operands.dx_operands``);
* ``dvalues[r, s] = X[:, r]^T @ dY[:, col_idx[r, s]]`` (``xla.sddmm_blocks``, XLA
  on every backend), zero on padding slots; ``col_idx`` gets no gradient.

bf16/f16 inputs accumulate in float32 (``preferred_element_type``); the result
and the gradients are returned in the input dtype. ``xla_dense`` and
``reference`` differentiate the dense masked product with plain autodiff.

A Flax layer can keep ``values`` as a param and ``col_idx`` as a constant and call
``bell_matmul_parts(x, values, col_idx, meta)``; ``bell_matmul(x, w)`` is the same
for a ``BlockELL`` pytree.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from kernels import autotune_cache
from kernels.block_ell import BlockELL, BlockELLMeta
from kernels.config import BACKENDS, KernelConfig, available_backends, backend_config, default_config, platform
from kernels.operands import ForwardIndex, GatherOperands, dx_operands, forward_operands, masked_values
from kernels.reference import reference_matmul
from kernels.xla import gather_spmm, scatter_spmm, sddmm_blocks

__all__ = ["bell_matmul", "bell_matmul_parts", "select_config"]


# ---------------------------------------------------------------- validation
def _check_inputs(x: Any, values: Any, col_idx: Any, meta: BlockELLMeta) -> None:
    if not isinstance(meta, BlockELLMeta):
        raise ValueError(f"meta={meta!r} must be a BlockELLMeta")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"x of type {type(x).__name__} must be an array")
    k, _ = meta.shape
    r_blocks, b = meta.n_row_blocks, meta.block
    if x.ndim < 2:
        raise ValueError(f"x.shape={tuple(x.shape)} must be [..., K={k}] with rank >= 2")
    if x.shape[-1] != k:
        raise ValueError(f"x.shape[-1]={x.shape[-1]} must equal K={k} of the weight")
    vshape = tuple(values.shape)
    if len(vshape) != 4 or vshape[0] != r_blocks or vshape[2:] != (b, b):
        raise ValueError(f"values.shape={vshape} must be [R={r_blocks}, S, {b}, {b}]")
    if tuple(col_idx.shape) != vshape[:2]:
        raise ValueError(
            f"col_idx.shape={tuple(col_idx.shape)} must equal values.shape[:2]={vshape[:2]}")
    if not jnp.issubdtype(col_idx.dtype, jnp.integer):
        raise ValueError(f"col_idx.dtype={col_idx.dtype} must be an integer dtype")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x.dtype={x.dtype} must be a floating dtype")
    if jnp.dtype(x.dtype) != jnp.dtype(values.dtype):
        raise ValueError(f"x.dtype={x.dtype} does not match values.dtype={values.dtype}")


def select_config(backend: str, m: int, meta: BlockELLMeta, slots: int, dtype: Any
                  ) -> KernelConfig:
    """Resolves ``backend`` (name or alias) to a concrete ``KernelConfig``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    plat = platform()
    avail = available_backends(plat, dtype, meta.block)
    if backend in ("auto", "xla"):
        key = autotune_cache.problem_key(m, meta, slots, dtype)
        cached = autotune_cache.lookup(key)
        if cached is not None and cached.backend in avail and (
                backend == "auto" or cached.backend.startswith("xla_")):
            return cached
        if backend == "xla":
            return backend_config(plat, "xla_scatter")
        return _small_m(default_config(plat, dtype, meta.block), m)
    if backend == "pallas":
        default = default_config(plat, dtype, meta.block)
        if default.backend.startswith("pallas_"):
            return default
        for name in ("pallas_triton", "pallas_interpret"):
            if name in avail:
                return backend_config(plat, name)
        raise ValueError(
            f"backend='pallas' has no kernel on platform={plat} for dtype="
            f"{jnp.dtype(dtype).name}, block={meta.block}")
    if backend not in avail:
        raise ValueError(
            f"backend={backend!r} is not available on platform={plat} for dtype="
            f"{jnp.dtype(dtype).name}, block={meta.block}; available: {avail}")
    return _small_m(backend_config(plat, backend), m)


_HIGHEST_NAMES = ("highest", "float32", "fp32", "f32")


def _effective_precision(precision):
    """``precision``, or HIGHEST when it is None and ``jax_default_matmul_precision``
    asks for full float32 (as XLA's own dots honour it; the Triton kernels would
    otherwise pick TF32 for a None precision)."""
    if precision is None:
        default = jax.config.jax_default_matmul_precision
        if default is not None and str(default).lower() in _HIGHEST_NAMES:
            return jax.lax.Precision.HIGHEST
    return precision


def _small_m(cfg: KernelConfig, m: int) -> KernelConfig:
    """Mosaic GPU's 256-row default tile halved for M < 2048 (mostly padding there)."""
    if cfg.backend == "pallas_mosaic" and cfg.block_m > 128 and m < 2048:
        return dataclasses.replace(cfg, block_m=128)
    return cfg


# ------------------------------------------------------------------ kernels
def _run_gather(cfg: KernelConfig, x: jax.Array, ops: GatherOperands, precision):
    """Runs a gather-form product on the configured backend."""
    name = cfg.backend
    if name in ("xla_scatter", "xla_gather"):
        return gather_spmm(x, ops.blocks[ops.pos], jnp.asarray(ops.idx), chunk_m=cfg.chunk_m,
                           precision=precision)
    if name in ("pallas_interpret", "pallas_triton"):
        from kernels.pallas_spmm import pallas_gather_spmm
        return pallas_gather_spmm(x, ops, block_m=cfg.block_m,
                                  interpret=name == "pallas_interpret",
                                  num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                  precision=precision)
    if name == "pallas_mosaic":
        from kernels.pallas_mosaic import mosaic_gather_spmm
        return mosaic_gather_spmm(x, ops, block_m=cfg.block_m,
                                  max_concurrent_steps=cfg.max_concurrent_steps)
    if name == "pallas_tpu":
        from kernels.pallas_tpu import tpu_gather_spmm
        return tpu_gather_spmm(x, ops, block_m=cfg.block_m, precision=precision)
    if name == "triton":
        from kernels.triton_spmm import triton_gather_spmm
        return triton_gather_spmm(x, ops, block_m=cfg.block_m, num_warps=cfg.num_warps,
                                  num_stages=cfg.num_stages,
                                  allow_tf32=precision is None)
    raise ValueError(f"backend={name!r} has no gather kernel")


# Kernels that stop every output block at its own entry count (the interpreter runs
# the Pallas Triton kernel's code, so CPU tests cover this path): they never read a
# padding slot, so their operands skip the masking and the zero block (no copies).
_STOPS_AT_COUNT = ("pallas_interpret", "pallas_triton", "triton", "pallas_mosaic")


def _forward(cfg: KernelConfig, meta: BlockELLMeta, precision, x, values, col_idx,
             index=None):
    if cfg.backend in _STOPS_AT_COUNT:
        ops = forward_operands(values, col_idx, meta, zero_block=False, index=index)
        return _run_gather(cfg, x, ops, precision)
    v = masked_values(values, col_idx)
    if cfg.backend == "xla_scatter":
        return scatter_spmm(x, v, col_idx, meta.n_col_blocks, chunk_m=cfg.chunk_m,
                            precision=precision)
    return _run_gather(cfg, x, forward_operands(v, col_idx, meta), precision)


def _dx(cfg: KernelConfig, precision, dy, values, col_idx):
    if cfg.backend in _STOPS_AT_COUNT:
        return _run_gather(cfg, dy, dx_operands(values, col_idx, zero_block=False),
                           precision)
    v = masked_values(values, col_idx)
    if cfg.backend.startswith("xla_"):
        return gather_spmm(dy, jnp.swapaxes(v, -1, -2), col_idx, chunk_m=cfg.chunk_m,
                           precision=precision)
    return _run_gather(cfg, dy, dx_operands(v, col_idx), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _bell_mm(cfg: KernelConfig, meta: BlockELLMeta, precision, x, values, col_idx, index):
    return _forward(cfg, meta, precision, x, values, col_idx, index)


def _bell_mm_fwd(cfg, meta, precision, x, values, col_idx, index):
    return _forward(cfg, meta, precision, x, values, col_idx, index), (x, values, col_idx)


def _bell_mm_bwd(cfg, meta, precision, res, dy):
    x, values, col_idx = res
    dy = dy.astype(x.dtype)
    dx = _dx(cfg, precision, dy, values, col_idx)
    # CPU: cache-sized chunks; accelerators: one pass (chunk loops cost launches).
    chunk = max(cfg.chunk_m, 256) if platform() == "cpu" else max(cfg.chunk_m, 1 << 16)
    dv = sddmm_blocks(x, dy, col_idx, meta.block, chunk_m=chunk, precision=precision)
    return dx, dv.astype(values.dtype), None, None


_bell_mm.defvjp(_bell_mm_fwd, _bell_mm_bwd)


# --------------------------------------------------------------- public API
def bell_matmul_parts(x: jax.Array, values: jax.Array, col_idx: jax.Array,
                      meta: BlockELLMeta, *, backend: str = "auto",
                      config: KernelConfig | None = None, precision=None,
                      index: ForwardIndex | None = None) -> jax.Array:
    """Y [..., N] = X [..., K] @ W for W given as Block-ELL parts.

    Args:
      x: [..., K] activations (rank >= 2), same dtype as ``values``.
      values: [R, S, b, b] stored blocks (padding slots are ignored).
      col_idx: [R, S] int32 block-columns, -1 padding.
      meta: static ``BlockELLMeta`` (logical shape, block, col_slots).
      backend: a name from ``config.BACKENDS``; ``"auto"`` uses the autotune cache
        or the platform default (XLA scatter form on CPU, Pallas on GPU/TPU).
      config: explicit ``KernelConfig`` (overrides ``backend``).
      precision: passed to the dots (``jax.lax.Precision``); on GPU fp32 the
        default allows TF32 like XLA's dense dot, ``HIGHEST`` forces IEEE fp32.
      index: optional ``operands.forward_index(col_idx, meta)`` computed once for a
        fixed pattern (used by the GPU kernels; the other backends ignore it).
    Returns:
      [..., N] in ``x.dtype`` (float32 accumulation for 16-bit inputs).
    """
    _check_inputs(x, values, col_idx, meta)
    precision = _effective_precision(precision)
    k, n = meta.shape
    kp, _ = meta.padded_shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0:  # empty batch: nothing to launch
        return jnp.zeros((*lead, n), x.dtype)
    if config is None:
        config = select_config(backend, x2.shape[0], meta, values.shape[1], x.dtype)
    elif not isinstance(config, KernelConfig):
        raise ValueError(f"config={config!r} must be a KernelConfig")
    if config.backend in ("reference", "xla_dense"):
        y = reference_matmul(x2, values, col_idx, meta, precision=precision)
        return y.reshape(*lead, n)
    if kp != k:
        x2 = jnp.pad(x2, ((0, 0), (0, kp - k)))
    if index is not None:
        c_blocks, t_slots = meta.n_col_blocks, meta.col_slots
        if not isinstance(index, ForwardIndex) or tuple(index.idx.shape) != (
                c_blocks, t_slots) or tuple(index.cnt.shape) != (c_blocks,):
            raise ValueError(f"index must be a ForwardIndex with idx [{c_blocks}, {t_slots}] "
                             f"and cnt [{c_blocks}] (operands.forward_index(col_idx, meta))")
    y = _bell_mm(config, meta, precision, x2, values, col_idx.astype(jnp.int32), index)
    return y[:, :n].reshape(*lead, n)


def bell_matmul(x: jax.Array, w: BlockELL, *, backend: str = "auto",
                config: KernelConfig | None = None, precision=None) -> jax.Array:
    """Y [..., N] = X [..., K] @ W [K, N] for a ``BlockELL`` W (see
    ``bell_matmul_parts`` for the arguments)."""
    if not isinstance(w, BlockELL):
        raise ValueError(f"w of type {type(w).__name__} must be a BlockELL")
    return bell_matmul_parts(x, w.values, w.col_idx, w.meta, backend=backend,
                             config=config, precision=precision)
