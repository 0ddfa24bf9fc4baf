"""jax-triton gather kernel (GPU only; ``triton`` and ``jax_triton`` are imported
lazily, so ``kernels`` imports without them).

Same computation and grid as ``pallas_spmm.py`` written directly in Triton: program
(i, j) owns Y[i-tile, j-block] and loops over ``cnt[j]`` entries::

    acc += tl.dot(X[i-tile, idx[j,t]-block], blocks[pos[j,t]])     (float32 acc)

Pointers are built from row-major strides of X [M, K], the flat blocks
[(NB+1)*b, b] and Y [M, J*b]; M is padded to BLOCK_M by the wrapper so loads need
no masks. fp32 inputs use ``input_precision="ieee"`` unless ``allow_tf32``.
Written for jax-triton 0.3.1 / triton 3.6 (``jax_triton.triton_call`` with
``out_shape``; output pointer last in the kernel signature).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.operands import GatherOperands

__all__ = ["triton_gather_spmm", "build_triton_kernel"]


@functools.cache
def build_triton_kernel():
    """Defines and returns the ``@triton.jit`` kernel (imports triton lazily)."""
    import triton
    import triton.language as tl

    @triton.jit
    def block_ell_gather_kernel(
        idx_ptr, pos_ptr, cnt_ptr, x_ptr, w_ptr, y_ptr,
        K: tl.constexpr, NOUT: tl.constexpr, T: tl.constexpr,
        BLOCK_M: tl.constexpr, B: tl.constexpr, IEEE: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_j = tl.program_id(1)
        n_entries = tl.load(cnt_ptr + pid_j)
        rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M*K may pass 2^31
        cols = tl.arange(0, B)
        acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
        for t in range(0, n_entries):
            r = tl.load(idx_ptr + pid_j * T + t)
            p = tl.load(pos_ptr + pid_j * T + t)
            xt = tl.load(x_ptr + rows[:, None] * K + (r * B + cols)[None, :])
            wt = tl.load(w_ptr + (p * B + cols)[:, None] * B + cols[None, :])
            if IEEE:
                acc += tl.dot(xt, wt, input_precision="ieee")
            else:
                acc += tl.dot(xt, wt)
        out = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + rows[:, None] * NOUT + (pid_j * B + cols)[None, :], out)

    return block_ell_gather_kernel


def triton_gather_spmm(x: jax.Array, ops: GatherOperands, *, block_m: int = 64,
                       num_warps: int = 4, num_stages: int = 3,
                       allow_tf32: bool = False) -> jax.Array:
    """Y [M, J*b] = gather-SpMM of x [M, R*b] through ``jax_triton.triton_call``."""
    import jax_triton as jt  # GPU image only

    m, kp = x.shape
    j_blocks, t_slots = ops.idx.shape
    b = ops.blocks.shape[-1]
    if j_blocks == 0 or t_slots == 0:
        return jnp.zeros((m, j_blocks * b), x.dtype)
    bm = int(block_m)
    mp = -(-m // bm) * bm
    if mp != m:
        x = jnp.pad(x, ((0, mp - m), (0, 0)))
    w2d = ops.blocks.astype(x.dtype).reshape(-1, b)
    ieee = jnp.dtype(x.dtype) == jnp.float32 and not allow_tf32
    y = jt.triton_call(
        ops.idx.reshape(-1), ops.pos.reshape(-1), ops.cnt, x, w2d,
        kernel=build_triton_kernel(),
        out_shape=jax.ShapeDtypeStruct((mp, j_blocks * b), x.dtype),
        grid=(mp // bm, j_blocks),
        num_warps=num_warps, num_stages=num_stages,
        K=kp, NOUT=j_blocks * b, T=t_slots, BLOCK_M=bm, B=b, IEEE=bool(ieee),
    )
    return y[:m]
