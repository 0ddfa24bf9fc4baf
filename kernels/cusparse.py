"""Export of a ``BlockELL`` to cuSPARSE's Blocked-ELL layout.

cuSPARSE (``cusparseCreateBlockedEll(descr, rows, cols, ellBlockSize, ellCols,
ellColInd, ellValue, ...)``) stores a sparse matrix A [rows, cols] used as the
*left* operand of ``C = op(A) @ op(B)`` (``cusparseSpMM``), with:

* ``ellBlockSize`` b: the square block size;
* ``ellCols``: the number of *element* columns of ``ellValue``, i.e. slots * b;
* ``ellColInd`` [rows/b, ellCols/b]: row-major block-column index of each slot,
  -1 for an empty slot (with ``idxBase`` added, 0 here);
* ``ellValue`` [rows, ellCols]: row-major; slot s of block-row r occupies
  ``ellValue[r*b:(r+1)*b, s*b:(s+1)*b]``.

Mapping of our W [K, N] (see ``block_ell.py``):

* ``operand="w"``: A = W (rows = K padded, cols = N padded). Our ``col_idx`` *is*
  ``ellColInd`` and ``values.transpose(0, 2, 1, 3).reshape(K, S*b)`` is
  ``ellValue``. This is the operand of the backward product ``dX^T = W @ dY^T``.
* ``operand="wt"`` (default): A = W^T (rows = N padded, cols = K padded), ELL
  width T = ``meta.col_slots``. This is the operand of the forward product
  ``Y^T = W^T @ X^T``: with row-major X and Y buffers, X^T and Y^T are the same
  buffers read column-major, so ``cusparseSpMM(opA=NON_TRANSPOSE, A=W^T,
  B=X^T (CUSPARSE_ORDER_COL, ld=K), C=Y^T (CUSPARSE_ORDER_COL, ld=N))`` computes
  Y = X @ W without copies.

Only the layout is produced here (host numpy); calling cuSPARSE needs a CUDA
binding that ``kernels/`` does not depend on.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kernels.block_ell import BlockELL, column_index

__all__ = ["CuSparseBlockedEll", "to_cusparse_blocked_ell"]


@dataclasses.dataclass(frozen=True)
class CuSparseBlockedEll:
    """Arguments of ``cusparseCreateBlockedEll`` (idxBase = 0, 32-bit indices).

    Attributes:
      rows, cols: dimensions of A (multiples of ``ell_block_size``).
      ell_block_size: b.
      ell_cols: element columns of ``ell_value`` (slots * b).
      ell_col_ind: [rows/b, ell_cols/b] int32, row-major, -1 = empty block.
      ell_value: [rows, ell_cols], row-major (C-contiguous numpy array).
    """

    rows: int
    cols: int
    ell_block_size: int
    ell_cols: int
    ell_col_ind: np.ndarray
    ell_value: np.ndarray

    def todense(self) -> np.ndarray:
        """Dense A [rows, cols] read back with cuSPARSE's Blocked-ELL semantics."""
        b = self.ell_block_size
        a = np.zeros((self.rows, self.cols), self.ell_value.dtype)
        for r, s in np.argwhere(self.ell_col_ind >= 0):
            c = int(self.ell_col_ind[r, s])
            a[r * b:(r + 1) * b, c * b:(c + 1) * b] = \
                self.ell_value[r * b:(r + 1) * b, s * b:(s + 1) * b]
        return a


def to_cusparse_blocked_ell(w: BlockELL, *, operand: str = "wt") -> CuSparseBlockedEll:
    """Blocked-ELL arrays of A = W^T (``operand="wt"``) or A = W (``"w"``).

    Padding slots get index -1 and zero values. Shapes are the padded ones.
    """
    meta = w.meta
    b = meta.block
    kp, np_ = meta.padded_shape
    idx = np.asarray(w.col_idx).astype(np.int32)
    values = np.asarray(w.values)
    values = np.where((idx >= 0)[:, :, None, None], values, 0).astype(values.dtype)
    r_blocks, slots = idx.shape
    if operand == "w":
        ell_value = values.transpose(0, 2, 1, 3).reshape(kp, slots * b)
        return CuSparseBlockedEll(kp, np_, b, slots * b, np.ascontiguousarray(idx),
                                  np.ascontiguousarray(ell_value))
    if operand == "wt":
        t_row, t_pos, _ = (np.asarray(a) for a in column_index(w.col_idx, meta))
        c_blocks, t_slots = t_row.shape
        flat = values.reshape(r_blocks * slots, b, b)
        gathered = np.where((t_pos >= 0)[:, :, None, None],
                            flat[np.maximum(t_pos, 0)] if flat.size else
                            np.zeros((c_blocks, t_slots, b, b), values.dtype), 0)
        # block (c, r) of W^T is values[r, s]^T
        ell_value = gathered.transpose(0, 3, 1, 2).reshape(np_, t_slots * b)
        return CuSparseBlockedEll(np_, kp, b, t_slots * b,
                                  np.ascontiguousarray(t_row.astype(np.int32)),
                                  np.ascontiguousarray(ell_value.astype(values.dtype)))
    raise ValueError(f"operand={operand!r} must be 'wt' or 'w'")
