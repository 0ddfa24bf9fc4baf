"""Operands of the output-stationary ("gather") kernels, built in-graph.

Every Pallas / Triton kernel computes, for each output block j::

    Y[:, j] = sum_{t < cnt[j]} X[:, idx[j, t]] @ blocks[pos[j, t]]

with ``blocks`` the flat stored blocks plus one trailing all-zero block. Padding
entries (t >= cnt[j]) point at input block 0 and at the zero block, so a kernel
may either stop at ``cnt[j]`` or run all T entries and still be exact.

Kernels that always stop at ``cnt[j]`` (Pallas Triton, jax-triton, Mosaic GPU) ask
for ``zero_block=False``: ``blocks`` is then ``values`` itself, reshaped (no copy,
no masking: valid entries only point at valid slots) and padding entries point at
block 0. On a GPU this removes two full passes over the stored values per call.

* forward ``Y = X @ W``: j = block-column of W, entries from the transposed index
  (``column_index``), T = ``meta.col_slots`` (padded to the busiest column);
* ``dX = dY @ W^T``: j = block-row of W, entries from ``col_idx`` (T = S, the
  balanced side), blocks transposed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.block_ell import BlockELLMeta, column_index

__all__ = ["GatherOperands", "ForwardIndex", "forward_index", "forward_operands",
           "dx_operands", "masked_values"]


class GatherOperands(NamedTuple):
    """Inputs of a gather kernel (see module docstring).

    blocks: [NB + 1, b, b] flat blocks, the last one zero.
    idx: [J, T] int32 input block of each entry (padding -> 0).
    pos: [J, T] int32 index into ``blocks`` (padding -> NB, the zero block).
    cnt: [J] int32 valid entries per output block (valid entries first).
    """

    blocks: jax.Array
    idx: jax.Array | np.ndarray  # numpy when from a host-computed ForwardIndex
    pos: jax.Array | np.ndarray
    cnt: jax.Array | np.ndarray


class ForwardIndex(NamedTuple):
    """The integer part of the forward ``GatherOperands`` (``zero_block=False``).

    A pure function of ``col_idx``, which no training step changes: a layer with a
    fixed pattern computes it once (``forward_index(np_col_idx, meta)`` on the host)
    and passes it to ``bell_matmul_parts(..., index=...)``, so the jitted product
    does not sort ``col_idx`` on every call (on an H100 that in-graph sort and its
    gathers are ~8 small kernels, ~14 us: a quarter of a 4096^3 product at 90%).

    idx, pos: [C, T] int32 (padding -> 0); cnt: [C] int32.
    """

    idx: jax.Array | np.ndarray  # numpy when computed on the host
    pos: jax.Array | np.ndarray
    cnt: jax.Array | np.ndarray


def forward_index(col_idx, meta: BlockELLMeta) -> ForwardIndex:
    """``ForwardIndex`` of ``col_idx`` [R, S] (in-graph for traced input; for a numpy
    ``col_idx`` call it outside ``jit`` and keep the result as constants)."""
    col_idx = jnp.asarray(col_idx, jnp.int32)
    t_row, t_pos, t_cnt = column_index(col_idx, meta)
    valid = t_pos >= 0
    return ForwardIndex(jnp.where(valid, t_row, 0).astype(jnp.int32),
                        jnp.where(valid, t_pos, 0).astype(jnp.int32),
                        t_cnt.astype(jnp.int32))


def masked_values(values: jax.Array, col_idx: jax.Array) -> jax.Array:
    """``values`` with padding slots (col_idx < 0) set to zero."""
    return jnp.where((col_idx >= 0)[:, :, None, None], values, jnp.zeros((), values.dtype))


def _flat_blocks(values: jax.Array, zero_block: bool) -> jax.Array:
    r_blocks, slots, b, _ = values.shape
    flat = values.reshape(r_blocks * slots, b, b)
    if not zero_block:
        return flat
    return jnp.concatenate([flat, jnp.zeros((1, b, b), values.dtype)], axis=0)


def forward_operands(values: jax.Array, col_idx: jax.Array, meta: BlockELLMeta, *,
                     zero_block: bool = True, index: ForwardIndex | None = None
                     ) -> GatherOperands:
    """Operands for Y = X @ W: one output block per block-column of W.

    ``zero_block=False``: for kernels that stop at ``cnt`` (see module docstring);
    ``values`` need not be masked then. ``index``: a precomputed ``ForwardIndex``
    of ``col_idx`` (only with ``zero_block=False``).
    """
    if index is not None and zero_block:
        raise ValueError("a precomputed ForwardIndex needs zero_block=False")
    if not zero_block:
        index = forward_index(col_idx, meta) if index is None else index
        return GatherOperands(_flat_blocks(values, False), *index)
    r_blocks, slots = col_idx.shape
    t_row, t_pos, t_cnt = column_index(col_idx, meta)
    valid = t_pos >= 0
    idx = jnp.where(valid, t_row, 0).astype(jnp.int32)
    pos = jnp.where(valid, t_pos, r_blocks * slots).astype(jnp.int32)
    return GatherOperands(_flat_blocks(values, True), idx, pos, t_cnt.astype(jnp.int32))


def dx_operands(values: jax.Array, col_idx: jax.Array, *, zero_block: bool = True
                ) -> GatherOperands:
    """Operands for dX = dY @ W^T: one output block per block-row of W
    (``zero_block`` as in ``forward_operands``)."""
    r_blocks, slots = col_idx.shape
    valid = col_idx >= 0
    order = jnp.argsort(~valid, axis=1, stable=True)  # valid slots first
    sorted_idx = jnp.take_along_axis(col_idx, order, axis=1)
    sorted_valid = sorted_idx >= 0
    flat_pos = jnp.arange(r_blocks, dtype=jnp.int32)[:, None] * slots + order
    idx = jnp.where(sorted_valid, sorted_idx, 0).astype(jnp.int32)
    pos = jnp.where(sorted_valid, flat_pos, r_blocks * slots if zero_block else 0
                    ).astype(jnp.int32)
    cnt = jnp.sum(valid, axis=1).astype(jnp.int32)
    return GatherOperands(_flat_blocks(jnp.swapaxes(values, -1, -2), zero_block), idx, pos,
                          cnt)
