"""Portable Pallas gather kernel: the Pallas *Triton* lowering on GPU, and
``interpret=True`` on CPU (where it is tested against the dense reference).

Grid (M / block_m, J): program (i, j) owns the output tile Y[i-tile, j-block]
and loops ``t < cnt[j]`` (a dynamic trip count, so padding entries cost nothing)
over the entries of ``GatherOperands``::

    acc += X[i-tile, idx[j,t]-block] @ blocks[pos[j,t]]        (float32 acc)

X, the flat blocks and the index arrays stay whole in global memory; each step
loads one [block_m, b] tile of X and one [b, b] block (dynamic ``pl.ds`` slices
whose sizes are static powers of two, as Triton requires). The output tile is
written once, so no atomics are needed.

JAX >= 0.9 lowers ``pallas_call`` on GPU to Mosaic GPU by default; passing
``jax.experimental.pallas.triton.CompilerParams`` selects the Triton lowering
(deprecated in JAX 0.11 but still present). The Hopper-specific Mosaic GPU kernel
lives in ``pallas_mosaic.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.operands import GatherOperands
from kernels.xla import acc_dtype

__all__ = ["pallas_gather_spmm"]


def _kernel(idx_ref, pos_ref, cnt_ref, x_ref, w_ref, o_ref, *, t_slots: int,
            block: int, block_m: int, precision, acc):
    i = pl.program_id(0)
    j = pl.program_id(1)
    n_entries = cnt_ref[j]

    def step(t, a):
        r = idx_ref[j * t_slots + t]
        p = pos_ref[j * t_slots + t]
        xt = x_ref[pl.ds(i * block_m, block_m), pl.ds(r * block, block)]
        wt = w_ref[pl.ds(p * block, block), :]
        return a + jnp.dot(xt, wt, precision=precision, preferred_element_type=acc)

    a = lax.fori_loop(0, n_entries, step, jnp.zeros((block_m, block), acc))
    o_ref[...] = a.astype(o_ref.dtype)


def pallas_gather_spmm(x: jax.Array, ops: GatherOperands, *, block_m: int = 64,
                       interpret: bool = False, num_warps: int = 4, num_stages: int = 2,
                       precision=None) -> jax.Array:
    """Y [M, J*b] = gather-SpMM of x [M, R*b] (see module docstring).

    Args:
      x: [M, R*b] activations; M is padded to a multiple of ``block_m`` here.
      ops: ``GatherOperands`` (forward or dX).
      block_m: rows per program (power of two; >= 16 for GPU dots).
      interpret: run with the Pallas interpreter (CPU tests).
      num_warps, num_stages: Triton launch parameters (GPU only).
    """
    m, kp = x.shape
    j_blocks, t_slots = ops.idx.shape
    b = ops.blocks.shape[-1]
    acc = acc_dtype(x.dtype)
    if j_blocks == 0 or t_slots == 0:
        return jnp.zeros((m, j_blocks * b), x.dtype)
    bm = int(block_m)
    mp = -(-m // bm) * bm
    if mp != m:
        x = jnp.pad(x, ((0, mp - m), (0, 0)))
    w2d = ops.blocks.astype(x.dtype).reshape(-1, b)
    idx = ops.idx.reshape(-1)
    pos = ops.pos.reshape(-1)
    whole = lambda shape: pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))
    kernel = functools.partial(_kernel, t_slots=t_slots, block=b, block_m=bm,
                               precision=precision, acc=acc)
    compiler_params = None
    if not interpret:
        from jax.experimental.pallas import triton as pl_triton
        compiler_params = pl_triton.CompilerParams(num_warps=num_warps,
                                                   num_stages=num_stages)
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((mp, j_blocks * b), x.dtype),
        grid=(mp // bm, j_blocks),
        in_specs=[whole(idx.shape), whole(pos.shape), whole(ops.cnt.shape),
                  whole(x.shape), whole(w2d.shape)],
        out_specs=pl.BlockSpec((bm, b), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=compiler_params,
        name="block_ell_gather_spmm",
    )(idx, pos, ops.cnt, x, w2d)
    return y[:m]
