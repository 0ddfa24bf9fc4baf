"""Block-ELL format: conversions, padding, validation, transposed index, pytree,
cuSPARSE export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import BlockELL, BlockELLMeta, block_mask, column_index, densify, to_cusparse_blocked_ell
from tests.block_ell_testing import random_bell


@pytest.mark.parametrize("k,n,block", [(32, 48, 8), (30, 45, 8), (7, 5, 4), (64, 16, 16)])
def test_dense_roundtrip_with_padding(k, n, block):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[: min(block, k), :] = 0  # an empty block-row
    bell = BlockELL.from_dense(w, block)
    r_blocks, c_blocks = -(-k // block), -(-n // block)
    assert bell.values.shape[0] == r_blocks and bell.values.shape[2:] == (block, block)
    assert bell.meta.padded_shape == (r_blocks * block, c_blocks * block)
    assert bell.shape == (k, n)
    np.testing.assert_array_equal(np.asarray(bell.todense()), w)
    assert np.all(np.asarray(bell.col_idx)[0] == -1)  # the empty row is all padding
    padded = np.asarray(densify(bell.values, bell.col_idx, bell.meta, padded=True))
    assert padded.shape == bell.meta.padded_shape
    assert np.all(padded[k:] == 0) and np.all(padded[:, n:] == 0)


def test_from_dense_mask_and_slots():
    w = np.arange(1, 4 * 6 + 1, dtype=np.float32).reshape(4, 6)
    mask = np.array([[True, False, True], [False, False, False]])
    bell = BlockELL.from_dense(w, 2, mask=mask, slots=3)
    np.testing.assert_array_equal(np.asarray(bell.col_idx), [[0, 2, -1], [-1, -1, -1]])
    assert np.all(np.asarray(bell.values)[:, 2] == 0) and np.all(np.asarray(bell.values)[1] == 0)
    expected = w * np.kron(mask, np.ones((2, 2)))
    np.testing.assert_array_equal(np.asarray(bell.todense()), expected)
    np.testing.assert_array_equal(np.asarray(bell.block_mask()), mask)
    assert bell.density() == pytest.approx(2 / 6)
    assert bell.meta.col_slots == 1


def test_padding_slot_values_are_ignored():
    bell = random_bell(16, 24, 4, 2, slots=4)
    junk = bell.values.at[:, 2:].set(1e3)
    np.testing.assert_array_equal(np.asarray(densify(junk, bell.col_idx, bell.meta)),
                                  np.asarray(bell.todense()))


def test_column_index_matches_brute_force():
    bell = random_bell(40, 56, 8, 3, slots=5, empty_rows=(1,), seed=3)
    t_row, t_pos, t_cnt = (np.asarray(a) for a in column_index(bell.col_idx, bell.meta))
    idx = np.asarray(bell.col_idx)
    slots = idx.shape[1]
    assert t_row.shape == (bell.meta.n_col_blocks, bell.meta.col_slots)
    for c in range(bell.meta.n_col_blocks):
        expect = sorted((r, r * slots + s) for r, s in np.argwhere(idx == c))
        assert t_cnt[c] == len(expect)
        got = list(zip(t_row[c, : t_cnt[c]], t_pos[c, : t_cnt[c]]))
        assert got == expect
        assert np.all(t_row[c, t_cnt[c]:] == -1) and np.all(t_pos[c, t_cnt[c]:] == -1)


def test_pytree_and_jit_passthrough():
    bell = random_bell(16, 16, 4, 2)
    leaves, treedef = jax.tree_util.tree_flatten(bell)
    assert len(leaves) == 2
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert again.meta == bell.meta
    double = lambda a: a * 2 if jnp.issubdtype(a.dtype, jnp.floating) else a
    doubled = jax.jit(lambda w: jax.tree.map(double, w))(bell)
    assert isinstance(doubled, BlockELL)
    np.testing.assert_array_equal(np.asarray(doubled.todense()), 2 * np.asarray(bell.todense()))
    assert hash(bell.meta) == hash(BlockELLMeta(bell.meta.shape, bell.block, bell.meta.col_slots))


def test_block_mask_in_graph():
    bell = random_bell(24, 32, 8, 2, slots=3, empty_rows=(2,))
    mask = np.asarray(jax.jit(block_mask, static_argnums=1)(bell.col_idx, bell.meta))
    assert mask.sum() == 2 * 2 and not mask[2].any()


@pytest.mark.parametrize("block", [0, -4, 3, 12, 2.0, True])
def test_bad_block_size(block):
    with pytest.raises(ValueError, match="block="):
        BlockELL.from_dense(np.ones((8, 8), np.float32), block)


def test_validate_rejects_bad_indices():
    values = jnp.zeros((2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"col_idx\[0, 1\]=3 is out of range"):
        BlockELL.from_parts(values, np.array([[0, 3], [1, -1]]), (8, 12), 4)
    with pytest.raises(ValueError, match=r"col_idx\[1, 0\]=-2"):
        BlockELL.from_parts(values, np.array([[0, 1], [-2, -1]]), (8, 12), 4)
    with pytest.raises(ValueError, match="row 1 repeats block-column 2"):
        BlockELL.from_parts(values, np.array([[0, 1], [2, 2]]), (8, 12), 4)
    with pytest.raises(ValueError, match=r"values.shape=\(2, 2, 4, 4\) must be \[R=3"):
        BlockELL.from_parts(values, np.array([[0, 1], [2, 1]]), (12, 12), 4)
    with pytest.raises(ValueError, match="col_idx.shape"):
        BlockELL.from_parts(values, np.array([[0, 1, 2], [2, 1, 0]]), (8, 12), 4)
    bell = BlockELL(values, jnp.array([[0, 1], [0, 2]], jnp.int32), BlockELLMeta((8, 12), 4, 1))
    with pytest.raises(ValueError, match="block-column 0 holds 2 blocks > meta.col_slots=1"):
        bell.validate()
    with pytest.raises(ValueError, match="col_idx.dtype"):
        BlockELL(values, jnp.zeros((2, 2), jnp.float32), BlockELLMeta((8, 12), 4, 2)).validate()


def test_meta_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K=0"):
        BlockELLMeta((0, 4), 4, 0)
    with pytest.raises(ValueError, match="col_slots=3 exceeds the 2 block-rows"):
        BlockELLMeta((8, 8), 4, 3)


# Hand-computed example (module docstring of kernels/cusparse.py):
#   W (4 x 6, b = 2) = [[1, 2, 0,  0, 5, 6],
#                       [3, 4, 0,  0, 7, 8],
#                       [0, 0, 9, 10, 0, 0],
#                       [0, 0, 11, 12, 0, 0]]
HAND_W = np.array([[1, 2, 0, 0, 5, 6], [3, 4, 0, 0, 7, 8],
                   [0, 0, 9, 10, 0, 0], [0, 0, 11, 12, 0, 0]], np.float32)


def test_cusparse_export_of_w_hand_example():
    bell = BlockELL.from_dense(HAND_W, 2, slots=2)
    ell = to_cusparse_blocked_ell(bell, operand="w")
    assert (ell.rows, ell.cols, ell.ell_block_size, ell.ell_cols) == (4, 6, 2, 4)
    np.testing.assert_array_equal(ell.ell_col_ind, [[0, 2], [1, -1]])
    np.testing.assert_array_equal(ell.ell_value, [[1, 2, 5, 6], [3, 4, 7, 8],
                                                  [9, 10, 0, 0], [11, 12, 0, 0]])
    assert ell.ell_value.flags["C_CONTIGUOUS"] and ell.ell_col_ind.dtype == np.int32
    np.testing.assert_array_equal(ell.todense(), HAND_W)


def test_cusparse_export_of_wt_hand_example():
    bell = BlockELL.from_dense(HAND_W, 2, slots=2)
    ell = to_cusparse_blocked_ell(bell)  # A = W^T [6, 4] for Y^T = W^T X^T
    assert (ell.rows, ell.cols, ell.ell_block_size, ell.ell_cols) == (6, 4, 2, 2)
    np.testing.assert_array_equal(ell.ell_col_ind, [[0], [1], [0]])
    np.testing.assert_array_equal(ell.ell_value, [[1, 3], [2, 4], [9, 11], [10, 12],
                                                  [5, 7], [6, 8]])
    np.testing.assert_array_equal(ell.todense(), HAND_W.T)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    # Y^T = A @ X^T is the forward product Y = X @ W.
    np.testing.assert_allclose((ell.todense() @ x.T).T, x @ HAND_W)


def test_cusparse_export_random_with_padding():
    bell = random_bell(20, 28, 4, 3, slots=4, empty_rows=(0,), seed=5)
    w = np.asarray(bell.todense())
    for operand, ref in (("w", w), ("wt", w.T)):
        ell = to_cusparse_blocked_ell(bell, operand=operand)
        got = ell.todense()
        np.testing.assert_array_equal(got[: ref.shape[0], : ref.shape[1]], ref)
        assert ell.ell_col_ind.shape == (ell.rows // 4, ell.ell_cols // 4)
    with pytest.raises(ValueError, match="operand='x'"):
        to_cusparse_blocked_ell(bell, operand="x")
