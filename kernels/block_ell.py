"""Block-ELL storage of a sparse weight matrix W [K, N] used as Y = X @ W.

Orientation
-----------
The sparse operand is the *weight* W [K, N] (K = input features, N = output
features, Flax's ``Dense`` kernel layout and a 1x1 conv kernel HWIO [1, 1, Cin,
Cout] squeezed to [Cin, Cout]). X [M, K] is the dense activation matrix. W is cut
into b x b blocks; block-row ``r`` covers input features ``r*b:(r+1)*b`` (a K-block,
i.e. the column block ``r`` of X) and block-column ``c`` covers output features
``c*b:(c+1)*b``. Every block-row stores the same number ``S`` of blocks (the
"balanced" ELL property)::

    values  [R, S, b, b]   R = ceil(K/b) block-rows, S slots per block-row
    col_idx [R, S] int32   block-column of each stored block, -1 marks padding

so ``W[r*b:(r+1)*b, col_idx[r, s]*b:(col_idx[r, s]+1)*b] = values[r, s]``.

Why rows of W = K-blocks: a block-row of W is exactly what one K-block of X
multiplies, ``Y += X[:, r-block] @ W[r-block, :]``. Storing W by K-block-rows
therefore makes the *gather* natural in both products of training:

* ``dX = dY @ W^T``: ``dX[:, r] = sum_s dY[:, col_idx[r, s]] @ values[r, s]^T``
  gathers dY blocks with ``col_idx`` and every output block of dX does exactly S
  block products (balanced, no padding waste);
* ``dvalues[r, s] = X[:, r]^T @ dY[:, col_idx[r, s]]`` gathers the same blocks;
* ``Y = X @ W`` either scatters (``Y[:, col_idx[r, s]] += X[:, r] @ values[r, s]``,
  the CPU-friendly form, see ``xla.py``) or, for output-stationary GPU/TPU kernels
  that iterate over output column blocks of Y, gathers X blocks through the
  transposed (CSC-like) index ``column_index()``: for block-column c the list of
  (K-block, slot) pairs stored in that column. That index is derived from
  ``col_idx`` in-graph (a sort of ``R*S`` integers), padded to
  ``meta.col_slots`` = the largest number of blocks in any block-column, so the
  pattern has one source of truth and a Flax layer only stores ``col_idx``.

cuSPARSE's Blocked-ELL describes the sparse *left* operand A of C = A @ B with
block-rows of A balanced. Our arrays are exactly the Blocked-ELL of A = W (used by
``dX^T = W dY^T``); the forward product ``Y^T = W^T X^T`` needs the Blocked-ELL of
W^T, which is the transposed index above. See ``cusparse.py``.

Shapes that are not multiples of b are padded with zeros up to ``meta.padded_shape``;
``meta.shape`` keeps the logical (K, N). Block sizes are powers of two (every
kernel tiles by them; Triton needs powers of two).

References: cuSPARSE Blocked-ELL (``cusparseCreateBlockedEll``); Gale et al., "Sparse
GPU Kernels for Deep Learning" (SC 2020) for balanced row work in SpMM.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BlockELLMeta",
    "BlockELL",
    "check_block_size",
    "column_index",
    "densify",
    "block_mask",
]


def check_block_size(block: Any) -> int:
    """Returns ``block`` as an int or raises a one-line ``ValueError``."""
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise ValueError(f"block={block!r} must be a positive power of two int")
    block = int(block)
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block={block} must be a positive power of two")
    return block


def _check_dim(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return int(value)


@dataclasses.dataclass(frozen=True)
class BlockELLMeta:
    """Static (hashable) description of a Block-ELL matrix.

    Attributes:
      shape: logical (K, N) of W before padding.
      block: block size b (power of two).
      col_slots: T, the largest number of stored blocks in any block-column; the
        width of ``column_index()``. 0 for a matrix with no stored block.
    """

    shape: tuple[int, int]
    block: int
    col_slots: int

    def __post_init__(self):
        if not isinstance(self.shape, tuple) or len(self.shape) != 2:
            raise ValueError(f"shape={self.shape!r} must be a (K, N) tuple")
        _check_dim("K", self.shape[0])
        _check_dim("N", self.shape[1])
        check_block_size(self.block)
        if not isinstance(self.col_slots, (int, np.integer)) or self.col_slots < 0:
            raise ValueError(f"col_slots={self.col_slots!r} must be an int >= 0")
        if self.col_slots > self.n_row_blocks:
            raise ValueError(
                f"col_slots={self.col_slots} exceeds the {self.n_row_blocks} block-rows")

    @property
    def n_row_blocks(self) -> int:
        """R = ceil(K / b)."""
        return -(-self.shape[0] // self.block)

    @property
    def n_col_blocks(self) -> int:
        """C = ceil(N / b)."""
        return -(-self.shape[1] // self.block)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(R*b, C*b)."""
        return (self.n_row_blocks * self.block, self.n_col_blocks * self.block)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["values", "col_idx"],
    meta_fields=["meta"],
)
@dataclasses.dataclass(frozen=True)
class BlockELL:
    """Balanced Block-ELL matrix W [K, N] (see the module docstring).

    Attributes:
      values: [R, S, b, b] stored blocks (float dtype); padding slots are ignored
        by every kernel (treated as zero) and receive zero gradient.
      col_idx: [R, S] int32 block-column of each slot, -1 for padding.
      meta: static ``BlockELLMeta``.

    A pytree: ``values`` and ``col_idx`` are leaves, ``meta`` is static, so a
    ``BlockELL`` passes through ``jax.jit`` like any parameter tree (``jax.grad``
    of a whole ``BlockELL`` needs ``allow_int=True`` for the integer ``col_idx``).
    A Flax layer can equally keep ``values`` as a param, ``col_idx`` in a constant
    collection and ``meta`` as a module attribute, and call ``bell_matmul_parts``.
    """

    values: jax.Array
    col_idx: jax.Array
    meta: BlockELLMeta

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.shape

    @property
    def block(self) -> int:
        return self.meta.block

    @property
    def slots(self) -> int:
        """S, stored blocks per block-row (padding included)."""
        return int(self.col_idx.shape[1])

    @property
    def dtype(self):
        return self.values.dtype

    def density(self) -> float:
        """Fraction of non-padding blocks among the R*C blocks (host)."""
        nnz = int(np.sum(np.asarray(self.col_idx) >= 0))
        return nnz / (self.meta.n_row_blocks * self.meta.n_col_blocks)

    # ----------------------------------------------------------- constructors
    @classmethod
    def from_parts(cls, values: Any, col_idx: Any, shape: tuple[int, int],
                   block: int) -> BlockELL:
        """Builds and validates a BlockELL from concrete arrays (host side).

        ``col_slots`` is computed from ``col_idx``, which must therefore be
        concrete (not traced).
        """
        block = check_block_size(block)
        shape = (_check_dim("K", shape[0]), _check_dim("N", shape[1]))
        idx = np.asarray(col_idx)
        meta0 = BlockELLMeta(shape, block, 0)
        if idx.ndim != 2:
            raise ValueError(f"col_idx.shape={idx.shape} must be [R, S]")
        valid = idx[(idx >= 0) & (idx < meta0.n_col_blocks)]
        counts = np.bincount(valid.astype(np.int64), minlength=meta0.n_col_blocks)
        col_slots = int(min(counts.max(initial=0), meta0.n_row_blocks))
        w = cls(jnp.asarray(values), jnp.asarray(idx, jnp.int32),
                BlockELLMeta(shape, block, col_slots))
        w.validate()
        return w

    @classmethod
    def from_dense(cls, w: Any, block: int, *, mask: Any = None,
                   slots: int | None = None) -> BlockELL:
        """Converts a dense W [K, N] (host side).

        Args:
          w: [K, N] array; padded with zeros to multiples of ``block``.
          block: block size b (power of two).
          mask: optional [R, C] bool, the blocks to store. Default: every block
            holding a nonzero entry. Stored blocks are kept even when all-zero.
          slots: S; default the largest number of stored blocks in a block-row.
            Rows with fewer blocks are padded with ``col_idx = -1`` and zero values.

        Returns:
          BlockELL with blocks of each row ordered by block-column.
        """
        block = check_block_size(block)
        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"w.shape={w.shape} must be [K, N]")
        meta0 = BlockELLMeta((int(w.shape[0]), int(w.shape[1])), block, 0)
        r_blocks, c_blocks = meta0.n_row_blocks, meta0.n_col_blocks
        kp, np_ = meta0.padded_shape
        wp = np.zeros((kp, np_), w.dtype)
        wp[: w.shape[0], : w.shape[1]] = w
        blocks = wp.reshape(r_blocks, block, c_blocks, block).transpose(0, 2, 1, 3)
        if mask is None:
            mask = np.any(blocks != 0, axis=(2, 3))
        mask = np.asarray(mask, bool)
        if mask.shape != (r_blocks, c_blocks):
            raise ValueError(
                f"mask.shape={mask.shape} must be (R, C)={(r_blocks, c_blocks)}")
        counts = mask.sum(axis=1)
        max_count = int(counts.max(initial=0))
        if slots is None:
            slots = max_count
        if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) \
                or slots < max_count:
            raise ValueError(
                f"slots={slots!r} must be an int >= the largest row count {max_count}")
        slots = int(slots)
        col_idx = np.full((r_blocks, slots), -1, np.int32)
        values = np.zeros((r_blocks, slots, block, block), w.dtype)
        for r in range(r_blocks):
            cols = np.flatnonzero(mask[r])
            col_idx[r, : cols.size] = cols
            values[r, : cols.size] = blocks[r, cols]
        return cls.from_parts(values, col_idx, meta0.shape, block)

    # ------------------------------------------------------------- conversion
    def todense(self) -> jax.Array:
        """Dense W [K, N] (logical shape); padding slots contribute nothing."""
        return densify(self.values, self.col_idx, self.meta)

    def block_mask(self) -> jax.Array:
        """[R, C] bool, True where a block is stored."""
        return block_mask(self.col_idx, self.meta)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Checks shapes and indices on the host; raises a one-line ValueError.

        Checks: values [R, S, b, b] float, col_idx [R, S] integer, every index in
        [-1, C), no block-column repeated within a block-row, and no block-column
        holding more than ``meta.col_slots`` blocks.
        """
        meta = self.meta
        r_blocks, c_blocks, b = meta.n_row_blocks, meta.n_col_blocks, meta.block
        vshape = tuple(self.values.shape)
        if len(vshape) != 4 or vshape[0] != r_blocks or vshape[2:] != (b, b):
            raise ValueError(
                f"values.shape={vshape} must be [R={r_blocks}, S, {b}, {b}]")
        if not jnp.issubdtype(self.values.dtype, jnp.floating):
            raise ValueError(f"values.dtype={self.values.dtype} must be floating")
        if tuple(self.col_idx.shape) != vshape[:2]:
            raise ValueError(
                f"col_idx.shape={tuple(self.col_idx.shape)} must equal values.shape[:2]"
                f"={vshape[:2]}")
        if not jnp.issubdtype(self.col_idx.dtype, jnp.integer):
            raise ValueError(f"col_idx.dtype={self.col_idx.dtype} must be integer")
        idx = np.asarray(self.col_idx)
        bad = (idx < -1) | (idx >= c_blocks)
        if bad.any():
            r, s = np.argwhere(bad)[0]
            raise ValueError(
                f"col_idx[{r}, {s}]={idx[r, s]} is out of range [-1, {c_blocks})")
        for r in range(r_blocks):
            row = idx[r][idx[r] >= 0]
            if row.size != np.unique(row).size:
                vals, cnt = np.unique(row, return_counts=True)
                raise ValueError(
                    f"col_idx row {r} repeats block-column {vals[cnt > 1][0]}")
        counts = np.bincount(idx[idx >= 0].astype(np.int64), minlength=c_blocks)
        if counts.max(initial=0) > meta.col_slots:
            c = int(np.argmax(counts))
            raise ValueError(
                f"block-column {c} holds {counts[c]} blocks > meta.col_slots="
                f"{meta.col_slots}")


def block_mask(col_idx: jax.Array, meta: BlockELLMeta) -> jax.Array:
    """[R, C] bool mask of stored blocks (in-graph)."""
    r_blocks, c_blocks = meta.n_row_blocks, meta.n_col_blocks
    rows = jnp.broadcast_to(jnp.arange(r_blocks)[:, None], col_idx.shape)
    cols = jnp.where(col_idx < 0, c_blocks, col_idx)
    return jnp.zeros((r_blocks, c_blocks), bool).at[rows, cols].set(True, mode="drop")


def densify(values: jax.Array, col_idx: jax.Array, meta: BlockELLMeta, *,
            padded: bool = False) -> jax.Array:
    """Dense W from Block-ELL parts (in-graph, differentiable in ``values``).

    Returns [K, N], or the zero-padded [R*b, C*b] when ``padded``.
    """
    r_blocks, c_blocks, b = meta.n_row_blocks, meta.n_col_blocks, meta.block
    rows = jnp.broadcast_to(jnp.arange(r_blocks)[:, None], col_idx.shape)
    cols = jnp.where(col_idx < 0, c_blocks, col_idx)  # padding -> dropped
    dense = jnp.zeros((r_blocks, c_blocks, b, b), values.dtype)
    dense = dense.at[rows, cols].add(values, mode="drop")
    dense = dense.transpose(0, 2, 1, 3).reshape(r_blocks * b, c_blocks * b)
    if padded:
        return dense
    return dense[: meta.shape[0], : meta.shape[1]]


def column_index(col_idx: jax.Array, meta: BlockELLMeta
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Transposed (CSC-like, Blocked-ELL of W^T) index, computed in-graph.

    For block-column c, lists the stored blocks of that column in increasing
    block-row order, padded to T = ``meta.col_slots``.

    Args:
      col_idx: [R, S] int, -1 padding.
      meta: static metadata (T = meta.col_slots must bound every column count).

    Returns:
      (t_row [C, T] int32 block-row r of each entry, -1 padding;
       t_pos [C, T] int32 flat slot position r*S + s into values.reshape(R*S, b, b),
       -1 padding;
       t_cnt [C] int32 number of valid entries; valid entries come first).
    """
    r_blocks, c_blocks, t_slots = meta.n_row_blocks, meta.n_col_blocks, meta.col_slots
    slots = col_idx.shape[1]
    n = r_blocks * slots
    flat = col_idx.reshape(n).astype(jnp.int32)
    key = jnp.where(flat < 0, c_blocks, flat)
    counts = jnp.zeros((c_blocks + 1,), jnp.int32).at[key].add(1)
    t_cnt = counts[:c_blocks]
    if t_slots == 0 or n == 0:
        empty = jnp.full((c_blocks, t_slots), -1, jnp.int32)
        return empty, empty, t_cnt
    order = jnp.argsort(key, stable=True).astype(jnp.int32)  # by column, then by r
    skey = key[order]
    starts = jnp.cumsum(counts) - counts
    rank = jnp.arange(n, dtype=jnp.int32) - starts[skey]
    t_pos = jnp.full((c_blocks, t_slots), -1, jnp.int32)
    t_pos = t_pos.at[skey, rank].set(order, mode="drop")  # padding key C dropped
    t_row = jnp.where(t_pos >= 0, t_pos // max(slots, 1), -1)
    return t_row, t_pos, t_cnt
