"""XLA (plain jax.numpy / lax) Block-SpMM kernels: the CPU path and the fallback.

Three products cover forward and backward of Y = X @ W (see ``block_ell.py``):

* ``scatter_spmm`` (row/"scatter" form): ``Y[:, idx[r, s]] += X[:, r] @ B[r, s]``.
  One batched dot over the R block-rows (batch r, [m, b] @ [b, S*b]) followed by a
  ``segment_sum`` over the output block index. Uses ``col_idx`` directly: balanced,
  no padding waste, no transposed index. Fastest forward on CPU in our sweeps.
* ``gather_spmm`` (column/"gather" form): ``Y[:, j] = sum_t X[:, idx[j, t]] @ B[j, t]``.
  Gathers X blocks and does one batched dot per output block with a long
  contraction (T*b). Used for dX = dY @ W^T with ``col_idx`` (balanced), and as a
  forward alternative with the transposed index (padded to the busiest column).
* ``sddmm_blocks``: ``dB[r, s] = X[:, r]^T @ dY[:, idx[r, s]]``, the gradient of
  the stored blocks (zero on padding slots).

All three walk M in chunks of ``chunk_m`` rows inside a ``fori_loop``: XLA:CPU
materializes each intermediate, and a per-chunk [R*S, chunk_m, b] intermediate
that stays in cache is much faster than one unchunked pass on CPU (``chunk_m``
is a tunable of ``KernelConfig``; ``kernels.autotune.tune`` times it).
Accumulation is in float32 (float64 for float64 inputs). On CPU, bf16/f16
operands are upcast to float32 before the dots: XLA:CPU's mixed
bf16 x bf16 -> f32 dot is much slower than converting and using the f32 one, and
products of 16-bit values are exact in f32 (same or better result).

Plain-jnp reference for all of them: ``kernels.reference`` (dense masked product).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["scatter_spmm", "gather_spmm", "sddmm_blocks", "acc_dtype", "compute_dtype"]


def acc_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype: float64 for float64 inputs, else float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def compute_dtype(dtype) -> jnp.dtype:
    """Dtype the dots run in: float32 for 16-bit inputs on CPU, else ``dtype``."""
    dtype = jnp.dtype(dtype)
    if dtype.itemsize == 2 and jax.default_backend() == "cpu":
        return jnp.dtype(jnp.float32)
    return dtype


def _chunked_rows(fn, operands, m: int, chunk_m: int, out_cols: int, out_dtype):
    """Applies ``fn`` to row chunks of ``operands`` (all [M, *]) -> [M, out_cols].

    ``fn`` returns its chunk in any float dtype; the loop carry stays float32 (or
    float64) and is cast to ``out_dtype`` once at the end: with a bf16 carry
    XLA:CPU copied the whole output every iteration.
    """
    mc = max(1, min(int(chunk_m), m))
    n_chunks = -(-m // mc)
    mp = n_chunks * mc
    if mp != m:
        operands = [jnp.pad(a, ((0, mp - m), (0, 0))) for a in operands]
    if n_chunks == 1:
        return fn(*operands)[:m].astype(out_dtype)
    carry_dtype = acc_dtype(out_dtype)

    def body(i, y):
        parts = [lax.dynamic_slice_in_dim(a, i * mc, mc, 0) for a in operands]
        return lax.dynamic_update_slice_in_dim(y, fn(*parts).astype(carry_dtype), i * mc, 0)

    y = lax.fori_loop(0, n_chunks, body, jnp.zeros((mp, out_cols), carry_dtype))
    return y[:m].astype(out_dtype)


def scatter_spmm(x: jax.Array, blocks: jax.Array, idx: jax.Array, n_out_blocks: int,
                 *, chunk_m: int = 128, precision=None) -> jax.Array:
    """Row/scatter form: ``Y[:, idx[r,s]] += X[:, r] @ blocks[r, s]``.

    Args:
      x: [M, R*b].
      blocks: [R, S, b, b]; must be zero where ``idx < 0``.
      idx: [R, S] int32 output block per slot, -1 padding (dropped).
      n_out_blocks: J, number of output blocks.
    Returns:
      [M, J*b] in ``x.dtype``.
    """
    m = x.shape[0]
    r_blocks, slots, b, _ = blocks.shape
    acc = acc_dtype(x.dtype)
    if slots == 0 or r_blocks == 0:
        return jnp.zeros((m, n_out_blocks * b), x.dtype)
    cdt = compute_dtype(x.dtype)
    rhs = blocks.astype(cdt).transpose(0, 2, 1, 3).reshape(r_blocks, b, slots * b)
    seg = jnp.where(idx < 0, n_out_blocks, idx).reshape(-1)  # OOB ids are dropped

    def chunk(xc):
        mc = xc.shape[0]
        xb = xc.astype(cdt).reshape(mc, r_blocks, b)
        o = lax.dot_general(xb, rhs, (((2,), (1,)), ((1,), (0,))),
                            precision=precision, preferred_element_type=acc)  # [R, mc, S*b]
        o = o.reshape(r_blocks, mc, slots, b).transpose(0, 2, 1, 3)
        o = o.reshape(r_blocks * slots, mc, b)
        yc = jax.ops.segment_sum(o, seg, num_segments=n_out_blocks)  # [J, mc, b]
        return yc.transpose(1, 0, 2).reshape(mc, n_out_blocks * b)

    return _chunked_rows(chunk, [x], m, chunk_m, n_out_blocks * b, x.dtype)


def gather_spmm(x: jax.Array, blocks: jax.Array, idx: jax.Array, *,
                chunk_m: int = 256, precision=None) -> jax.Array:
    """Column/gather form: ``Y[:, j] = sum_t X[:, idx[j, t]] @ blocks[j, t]``.

    Args:
      x: [M, R*b].
      blocks: [J, T, b, b]; must be zero where ``idx < 0``.
      idx: [J, T] int32 input block per slot, -1 padding (any valid block is read
        and multiplied by the zero block, exactly like the dense masked product).
    Returns:
      [M, J*b] in ``x.dtype``.
    """
    m, kp = x.shape
    j_blocks, t_slots, b, _ = blocks.shape
    r_blocks = kp // b
    acc = acc_dtype(x.dtype)
    if t_slots == 0 or j_blocks == 0:
        return jnp.zeros((m, j_blocks * b), x.dtype)
    cdt = compute_dtype(x.dtype)
    rhs = blocks.astype(cdt).reshape(j_blocks, t_slots * b, b)
    gi = jnp.clip(idx, 0, r_blocks - 1)

    def chunk(xc):
        mc = xc.shape[0]
        xg = jnp.take(xc.astype(cdt).reshape(mc, r_blocks, b), gi, axis=1, mode="clip")
        xg = xg.reshape(mc, j_blocks, t_slots * b)
        yc = lax.dot_general(xg, rhs, (((2,), (1,)), ((1,), (0,))),
                             precision=precision, preferred_element_type=acc)  # [J, mc, b]
        return yc.transpose(1, 0, 2).reshape(mc, j_blocks * b)

    return _chunked_rows(chunk, [x], m, chunk_m, j_blocks * b, x.dtype)


def sddmm_blocks(x: jax.Array, dy: jax.Array, idx: jax.Array, block: int, *,
                 chunk_m: int = 256, precision=None) -> jax.Array:
    """Block gradient: ``dB[r, s] = X[:, r]^T @ dY[:, idx[r, s]]``, 0 on padding.

    Args:
      x: [M, R*b]; dy: [M, C*b]; idx: [R, S] int32 (-1 padding).
    Returns:
      [R, S, b, b] in the accumulation dtype (float32, or float64).
    """
    m, kp = x.shape
    b = block
    r_blocks, slots = idx.shape
    c_blocks = dy.shape[1] // b
    acc = acc_dtype(x.dtype)
    if slots == 0 or r_blocks == 0:
        return jnp.zeros((r_blocks, slots, b, b), acc)
    gi = jnp.clip(idx, 0, c_blocks - 1)
    mc = max(1, min(int(chunk_m), m))
    n_chunks = -(-m // mc)
    mp = n_chunks * mc
    if mp != m:
        x = jnp.pad(x, ((0, mp - m), (0, 0)))
        dy = jnp.pad(dy, ((0, mp - m), (0, 0)))

    cdt = compute_dtype(x.dtype)

    def chunk(xc, dyc):
        xb = xc.astype(cdt).reshape(mc, r_blocks, b)
        dyg = jnp.take(dyc.astype(cdt).reshape(mc, c_blocks, b), gi, axis=1, mode="clip")
        dyg = dyg.reshape(mc, r_blocks, slots * b)
        return lax.dot_general(xb, dyg, (((0,), (0,)), ((1,), (1,))),
                               precision=precision, preferred_element_type=acc)  # [R,b,S*b]

    if n_chunks == 1:
        g = chunk(x, dy)
    else:
        def body(i, g):
            xc = lax.dynamic_slice_in_dim(x, i * mc, mc, 0)
            dyc = lax.dynamic_slice_in_dim(dy, i * mc, mc, 0)
            return g + chunk(xc, dyc)
        g = lax.fori_loop(0, n_chunks, body, jnp.zeros((r_blocks, b, slots * b), acc))
    g = g.reshape(r_blocks, b, slots, b).transpose(0, 2, 1, 3)
    return jnp.where((idx >= 0)[:, :, None, None], g, 0)
