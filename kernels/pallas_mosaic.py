"""Pallas Mosaic GPU (Hopper, ``wgmma``) gather kernel, bf16/f16 inputs.

Structure (persistent kernel, one program per SM, as in JAX's Mosaic GPU
``ragged_dot`` example, ``jax/experimental/pallas/ops/gpu/ragged_dot_mgpu.py``):

* ``plgpu.nd_loop`` walks the (M / block_m) x J output tiles, j fastest so that
  neighbouring SMs read the same rows of X (L2 reuse);
* for tile (i, j) an ``emit_pipeline`` over the T entries of ``GatherOperands``
  TMA-copies the X tile (block_m, b) at block (i, idx[j, t]) and the stored block
  (b, b) at block (pos[j, t], 0) into SMEM (the index maps read idx/pos from
  GMEM) and issues ``wgmma`` into a float32 register accumulator;
* the tile is stored through SMEM with a TMA copy.

The pipeline's grid is dynamic: tile (i, j) runs exactly ``cnt[j]`` steps (read
from GMEM), so padding entries cost nothing even where the busiest block-column
(T, see ``block_ell.column_index``) holds twice the average (a row-balanced random
pattern at 90% sparsity); empty columns store zeros.

Constraints: block_m a multiple of 64 (one warpgroup of wgmma rows), b in
{16, 32, 64, 128} (wgmma N and K tiles; K >= 16 for 16-bit inputs), dtype
bfloat16 or float16 (wgmma has no fp32 inputs except TF32, which this kernel does
not use; fp32 goes to the Triton lowering). M is padded to block_m here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.operands import GatherOperands

__all__ = ["mosaic_gather_spmm", "mosaic_supported", "fit_smem"]

DEFAULT_NUM_SMS = 132  # H100 SXM; used when no GPU is attached (lowering tests)


def mosaic_supported(dtype, block: int, block_m: int) -> bool:
    """Whether the Mosaic GPU kernel handles this (dtype, b, block_m)."""
    return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and block in (16, 32, 64, 128) and block_m % 64 == 0 and block_m <= 256)


SMEM_BYTES = 232448  # Hopper's per-block limit (227 KiB), as Mosaic GPU reports it


def fit_smem(block_m: int, block: int, steps: int, dtype) -> tuple[int, int]:
    """(block_m, steps) whose pipeline buffers fit in shared memory.

    Each pipeline step holds an X tile [block_m, b] and a block [b, b]; the output
    tile reuses that memory after the pipeline. Steps drop first (not below 2),
    then block_m halves (not below 64): b = 128 with 256-row tiles fits 2 steps.
    """
    item = jnp.dtype(dtype).itemsize
    steps = max(2, int(steps))
    per_step = lambda bm: (bm * block + block * block) * item
    while block_m > 64 and 2 * per_step(block_m) + 64 > SMEM_BYTES:
        block_m //= 2
    while steps > 2 and steps * per_step(block_m) + 64 > SMEM_BYTES:
        steps -= 1
    return block_m, steps


def _num_sms() -> int:
    dev = jax.devices()[0]
    if dev.platform == "gpu":
        count = getattr(dev, "core_count", None)
        if count:
            return int(count)
    return DEFAULT_NUM_SMS


def mosaic_gather_spmm(x: jax.Array, ops: GatherOperands, *, block_m: int = 128,
                       max_concurrent_steps: int = 3, num_sms: int | None = None
                       ) -> jax.Array:
    """Y [M, J*b] = gather-SpMM of x [M, R*b] with Mosaic GPU (Hopper)."""
    from jax.experimental.pallas import mosaic_gpu as plgpu  # GPU-only module

    m, _ = x.shape
    j_blocks, t_slots = ops.idx.shape
    b = ops.blocks.shape[-1]
    if not mosaic_supported(x.dtype, b, block_m):
        raise ValueError(
            f"mosaic kernel: unsupported dtype={x.dtype} block={b} block_m={block_m}")
    if j_blocks == 0 or t_slots == 0:
        return jnp.zeros((m, j_blocks * b), x.dtype)
    bm, steps = fit_smem(int(block_m), b, int(max_concurrent_steps), x.dtype)
    mp = -(-m // bm) * bm
    if mp != m:
        x = jnp.pad(x, ((0, mp - m), (0, 0)))
    w2d = ops.blocks.astype(x.dtype).reshape(-1, b)
    idx = ops.idx.reshape(-1)
    pos = ops.pos.reshape(-1)
    grid_m = mp // bm

    def body(idx_gmem, pos_gmem, cnt_gmem, x_gmem, w_gmem, o_gmem):
        @plgpu.nd_loop((grid_m * j_blocks,), collective_axes="sm")
        def _tile_loop(loop_info):
            (lin,) = loop_info.index
            mi = lin // j_blocks
            ji = lin % j_blocks

            def acc_scope(acc_ref):
                plgpu.emit_pipeline(
                    lambda _, x_smem, w_smem: plgpu.wgmma(acc_ref, x_smem, w_smem),
                    grid=(cnt_gmem[ji],),
                    in_specs=[
                        plgpu.BlockSpec((bm, b), lambda t: (mi, idx_gmem[ji * t_slots + t]),
                                        delay_release=1),
                        plgpu.BlockSpec((b, b), lambda t: (pos_gmem[ji * t_slots + t], 0),
                                        delay_release=1),
                    ],
                    max_concurrent_steps=steps,
                )(x_gmem, w_gmem)
                return acc_ref[...]

            acc = pl.run_scoped(acc_scope, plgpu.ACC((bm, b)))

            @functools.partial(pl.run_scoped, o_smem=plgpu.SMEM((bm, b), o_gmem.dtype))
            def _store(o_smem):
                o_smem[...] = acc.astype(o_smem.dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(
                    o_smem, o_gmem.at[pl.ds(mi * bm, bm), pl.ds(ji * b, b)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((mp, j_blocks * b), x.dtype),
        grid=(num_sms or _num_sms(),),
        grid_names=("sm",),
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )
    return kernel(idx, pos, ops.cnt, x, w2d)[:m]
