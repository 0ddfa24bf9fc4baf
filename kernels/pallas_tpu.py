"""Pallas TPU gather kernel with scalar-prefetched indices.

``pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=3)`` places ``idx``, ``pos`` and
``cnt`` (``GatherOperands``) in SMEM before the grid starts, so the BlockSpec
index maps can read them and the Pallas pipeline DMAs exactly the X tile and the
stored block that each step needs::

    grid = (M / block_m, J, T)            T = entries per output block
    X tile      (block_m, b) at (i, idx[j, t])
    block       (b, b)       at (pos[j, t], 0)    blocks laid out [(NB+1)*b, b]
    Y tile      (block_m, b) at (i, j)            revisited over t (accumulator)

Steps with t >= cnt[j] skip the MXU work (``pl.when``) and their index maps
repeat the last valid entry, so the pipeline issues no new DMA for them (Pallas
skips the copy when a block index does not change between consecutive steps).
The t axis is the reduction ("arbitrary"); i, j are "parallel".

Mosaic TPU tiling needs the last two block dims divisible by (8, 128): use
b % 128 == 0 (b = 128, 256) and block_m % 8 == 0. The dispatcher falls back to
XLA for smaller blocks on TPU. On CPU the same kernel runs with
``interpret=True`` (tests), where the tiling rule does not apply.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.operands import GatherOperands
from kernels.xla import acc_dtype

__all__ = ["tpu_gather_spmm", "tpu_supported"]


def tpu_supported(block: int, block_m: int) -> bool:
    """Whether (b, block_m) satisfies Mosaic TPU's (8, 128) tiling."""
    return block % 128 == 0 and block_m % 8 == 0


def _kernel(idx_ref, pos_ref, cnt_ref, x_ref, w_ref, o_ref, acc_ref, *, t_slots: int,
            precision):
    j = pl.program_id(1)
    t = pl.program_id(2)

    @pl.when(t == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(t < cnt_ref[j])
    def _accumulate():
        acc_ref[...] += jnp.dot(x_ref[...], w_ref[...], precision=precision,
                                preferred_element_type=acc_ref.dtype)

    @pl.when(t == t_slots - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def tpu_gather_spmm(x: jax.Array, ops: GatherOperands, *, block_m: int = 128,
                    interpret: bool = False, precision=None) -> jax.Array:
    """Y [M, J*b] = gather-SpMM of x [M, R*b] on TPU (see module docstring)."""
    m, _ = x.shape
    j_blocks, t_slots = ops.idx.shape
    b = ops.blocks.shape[-1]
    acc = acc_dtype(x.dtype)
    if j_blocks == 0 or t_slots == 0:
        return jnp.zeros((m, j_blocks * b), x.dtype)
    bm = int(block_m)
    mp = -(-m // bm) * bm
    if mp != m:
        x = jnp.pad(x, ((0, mp - m), (0, 0)))
    # Padding entries re-use the last valid entry's indices: no new DMA.
    last = jnp.maximum(ops.cnt - 1, 0)[:, None]
    fetch = jnp.minimum(jnp.arange(t_slots, dtype=jnp.int32)[None, :], last)
    idx = jnp.take_along_axis(ops.idx, fetch, axis=1).reshape(-1)
    pos = jnp.take_along_axis(ops.pos, fetch, axis=1).reshape(-1)
    w2d = ops.blocks.astype(x.dtype).reshape(-1, b)

    def x_map(i, j, t, idx_ref, pos_ref, cnt_ref):
        return i, idx_ref[j * t_slots + t]

    def w_map(i, j, t, idx_ref, pos_ref, cnt_ref):
        return pos_ref[j * t_slots + t], 0

    def o_map(i, j, t, idx_ref, pos_ref, cnt_ref):
        return i, j

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(mp // bm, j_blocks, t_slots),
        in_specs=[pl.BlockSpec((bm, b), x_map), pl.BlockSpec((b, b), w_map)],
        out_specs=pl.BlockSpec((bm, b), o_map),
        scratch_shapes=[pltpu.VMEM((bm, b), acc)],
    )
    y = pl.pallas_call(
        functools.partial(_kernel, t_slots=t_slots, precision=precision),
        out_shape=jax.ShapeDtypeStruct((mp, j_blocks * b), x.dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="block_ell_gather_spmm_tpu",
    )(idx, pos, ops.cnt, x, w2d)
    return y[:m]
