"""Balanced block pruning: counts, target sparsity, magnitude order, block-OBS quality
(the OBS engine's hobs_jax.obs.block) and its shared safeguards, convolutions, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax.obs.block import compensate as obs_compensate
from hobs_jax.obs.block import hessian_from_inputs
from hobs_jax.obs.block import prune as prune_obs
from hobs_jax.obs.block import saliency as obs_saliency
from kernels import (
    bell_matmul,
    block_norms,
    conv_kernel_to_matrix,
    im2col,
    keep_per_row,
    prune,
    prune_magnitude,
    select_balanced,
)


def _correlated_inputs(n, k, seed=0):
    """Inputs with strongly correlated features (a random mixing of few factors)."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, k // 4))
    mix = rng.standard_normal((k // 4, k))
    return factors @ mix + 0.1 * rng.standard_normal((n, k))


@pytest.mark.parametrize("k,n,block,sparsity", [(64, 96, 16, 0.5), (60, 90, 8, 0.75),
                                                 (64, 128, 8, 0.9), (32, 32, 4, 0.0)])
def test_magnitude_balanced_counts_and_sparsity(k, n, block, sparsity):
    w = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    bell = prune_magnitude(w, block, sparsity)
    c_blocks = -(-n // block)
    keep = keep_per_row(c_blocks, sparsity)
    idx = np.asarray(bell.col_idx)
    assert idx.shape == (-(-k // block), keep)
    assert np.all((idx >= 0).sum(axis=1) == keep)  # exact count in every block-row
    achieved = 1 - keep / c_blocks
    assert abs(achieved - sparsity) <= 0.5 / c_blocks + 1e-12  # nearest achievable
    if (1 - sparsity) * c_blocks == int((1 - sparsity) * c_blocks):
        assert achieved == pytest.approx(sparsity)  # exact when representable


def test_magnitude_keeps_largest_blocks():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    bell = prune_magnitude(w, 8, 0.75)
    norms = block_norms(w, 8)
    mask = np.asarray(bell.block_mask())
    for r in range(norms.shape[0]):
        assert norms[r, mask[r]].min() >= norms[r, ~mask[r]].max()
    kept = np.asarray(bell.todense())
    np.testing.assert_array_equal(kept[np.kron(mask, np.ones((8, 8), bool))],
                                  w[np.kron(mask, np.ones((8, 8), bool))])


def test_select_balanced_ties_are_deterministic():
    mask = select_balanced(np.ones((2, 4)), 2)
    np.testing.assert_array_equal(mask, [[True, True, False, False]] * 2)


def test_obs_saliency_closed_form_for_diagonal_hessian():
    # With H = diag(h) and no damping the block saliency is 1/2 sum_i h_i w_ij^2.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 8))
    h = np.diag(rng.uniform(0.5, 2.0, 8))
    sal = obs_saliency(w, h, 4, damp=0.0)
    hb = np.diag(h).reshape(2, 4)
    expect = np.array([[0.5 * np.sum(hb[r][:, None] * w[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] ** 2)
                        for c in range(2)] for r in range(2)])
    np.testing.assert_allclose(sal, expect, rtol=1e-12)


def test_obs_beats_magnitude_on_correlated_data():
    k, n, block, sparsity = 64, 64, 8, 0.75
    x = _correlated_inputs(2048, k)
    w = np.random.default_rng(4).standard_normal((k, n))
    h = hessian_from_inputs(x)
    err = lambda bell: np.linalg.norm(x @ w - x @ np.asarray(bell.todense(), np.float64))
    e_mag = err(prune_magnitude(w, block, sparsity))
    e_obs_nocomp = err(prune_obs(w, h, block, sparsity, compensate_kept=False))
    e_obs = err(prune_obs(w, h, block, sparsity))
    assert e_obs < 0.7 * e_mag, (e_obs, e_mag)
    assert e_obs < e_obs_nocomp
    # Compensation also improves the magnitude mask (same support).
    mask = np.asarray(prune_magnitude(w, block, sparsity).block_mask())
    e_mag_comp = np.linalg.norm(x @ w - x @ obs_compensate(w, h, mask, block))
    assert e_mag_comp < e_mag


def test_obs_compensation_is_least_squares_optimal_on_support():
    # Any perturbation of the compensated kept weights increases the error.
    k, n, block = 16, 8, 4
    x = _correlated_inputs(256, k, seed=5)
    w = np.random.default_rng(6).standard_normal((k, n))
    h = hessian_from_inputs(x)
    mask = select_balanced(np.random.default_rng(7).random((4, 2)), 1)
    wc = obs_compensate(w, h, mask, block, damp=0.0)
    support = np.kron(mask, np.ones((block, block), bool))
    assert np.all(wc[~support] == 0)
    base = np.linalg.norm(x @ (w - wc))
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(wc.shape) * support * 1e-3
        assert np.linalg.norm(x @ (w - wc - d)) > base


def test_pruning_is_deterministic_and_keeps_dtype():
    x = _correlated_inputs(256, 32, seed=8)
    w = np.random.default_rng(9).standard_normal((32, 48)).astype(np.float32)
    h = hessian_from_inputs(x)
    a, b = prune_obs(w, h, 8, 0.5), prune_obs(w, h, 8, 0.5)
    assert a.values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))
    np.testing.assert_array_equal(np.asarray(a.col_idx), np.asarray(b.col_idx))


def test_prune_1x1_and_kxk_conv_through_im2col():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 8)), jnp.float32)
    # 1x1 conv: HWIO [1, 1, Cin, Cout] is W [Cin, Cout]
    k1 = jnp.asarray(rng.standard_normal((1, 1, 8, 16)), jnp.float32)
    w1 = conv_kernel_to_matrix(k1)
    np.testing.assert_array_equal(np.asarray(w1), np.asarray(k1[0, 0]))
    bell = prune_obs(np.asarray(w1), hessian_from_inputs(np.asarray(x)), 4, 0.5)
    y = bell_matmul(x, bell)
    assert y.shape == (2, 6, 6, 16)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ bell.todense()), rtol=1e-5, atol=1e-5)
    # 3x3 conv via im2col: [9*Cin, Cout]
    k3 = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)
    patches = im2col(x, (3, 3), padding=((1, 1), (1, 1)))
    w3 = conv_kernel_to_matrix(k3)
    dense_conv = jax.lax.conv_general_dilated(x, k3, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(patches @ w3), np.asarray(dense_conv), rtol=1e-4,
                               atol=1e-4)
    bell3 = prune_obs(np.asarray(w3), hessian_from_inputs(np.asarray(patches)), 8, 0.5)
    y3 = bell_matmul(patches, bell3)
    np.testing.assert_allclose(np.asarray(y3), np.asarray(patches @ bell3.todense()),
                               rtol=1e-4, atol=1e-4)


def test_prune_bad_input():
    w = np.ones((16, 16), np.float32)
    for bad in (-0.1, 1.0, 1.5, "x", None):
        with pytest.raises(ValueError, match="sparsity="):
            prune_magnitude(w, 4, bad)
    with pytest.raises(ValueError, match=r"hessian.shape=\(8, 8\) must be \(K, K\)=\(16, 16\)"):
        prune_obs(w, np.eye(8), 4, 0.5)
    with pytest.raises(ValueError, match=r"scores.shape=\(2, 2\) must be \(R, C\)=\(4, 4\)"):
        prune(w, 4, 0.5, scores=np.ones((2, 2)))
    with pytest.raises(ValueError, match="block=6"):
        prune_magnitude(w, 6, 0.5)
    with pytest.raises(ValueError, match="damp=-1"):
        prune_obs(w, np.eye(16), 4, 0.5, damp=-1)
    with pytest.raises(ValueError, match=r"w.shape=\(16,\)"):
        prune_magnitude(np.ones(16), 4, 0.5)


def test_block_obs_shares_the_channel_obs_math_and_safeguards():
    """Block OBS = the channel OBS's saliency of a block's rows, with the same dampening,
    dead-input and robust-inverse safeguards (hobs_jax.obs.linalg)."""
    from hobs_jax.obs import Consumer, robust_inverse

    k, b = 16, 4
    x = _correlated_inputs(256, k, seed=11)
    x[:, 5] = 0.0  # a dead input: zero row and column of H
    h = hessian_from_inputs(x)
    w = np.random.default_rng(12).standard_normal((k, b))
    sal = obs_saliency(w, h, b, damp=0.01)  # [4 block-rows, 1 block-column]
    _, hinv, _, dead = robust_inverse(h, 0.01)
    assert dead.tolist() == [i == 5 for i in range(k)]
    live = np.where(dead[:, None], 0.0, w)
    cons = Consumer("layer", live, hinv.copy(), np.arange(k).reshape(k // b, b))
    np.testing.assert_allclose(sal[:, 0], cons.saliency(np.ones(k // b, bool)), rtol=1e-9)
    # The dead row is free and stays zero in the refit (pruning block-row 0 of 4).
    mask = np.array([[False], [True], [True], [True]])
    wc = obs_compensate(w, h, mask, b, damp=0.01)
    assert np.all(wc[5] == 0) and np.all(wc[:4] == 0)
    # A singular Hessian with no dampening is re-dampened (logged), not an error.
    low_rank = hessian_from_inputs(x[:3])
    assert np.isfinite(obs_saliency(w, low_rank, b, damp=0.0)).all()
