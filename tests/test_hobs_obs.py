"""The OBS engine's linear algebra (hobs_jax.obs): closed forms, downdates, exact
compensation, robust inversion, the timing hook."""

import logging

import numpy as np
import pytest

from hobs_jax.obs import (
    Consumer,
    blas_threads,
    channel_rows,
    compensate,
    greedy_path,
    path_scores,
    rank_scores,
    reconstruction_error,
    robust_inverse,
    single_removal,
    subtract_product,
)


def correlated_inputs(n=400, channels=6, taps=2, seed=0):
    """X [n, taps*channels] rows ordered (tap, channel), with strongly correlated channels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, taps * 3))
    mix = rng.normal(size=(taps * 3, taps * channels))
    return z @ mix + 0.05 * rng.normal(size=(n, taps * channels))


def hessian(x):
    return 2.0 / len(x) * x.T @ x


def test_single_removal_matches_the_constrained_least_squares():
    x = correlated_inputs()
    w = np.random.default_rng(1).normal(size=(12, 4))
    h = hessian(x) + 1e-3 * np.eye(12)
    hinv = np.linalg.inv(h)
    q = np.array([2, 8])  # channel 2 of 6, taps 0 and 1
    w_new, rho = single_removal(w, hinv, q)
    keep = np.setdiff1d(np.arange(12), q)
    # Direct: minimize (w' - w)^T H (w' - w) with w'_Q = 0 -> w'_K = w_K + H_KK^-1 H_KQ w_Q.
    direct = np.zeros_like(w)
    direct[keep] = w[keep] + np.linalg.solve(h[np.ix_(keep, keep)], h[np.ix_(keep, q)] @ w[q])
    np.testing.assert_allclose(w_new, direct, rtol=1e-9, atol=1e-12)
    dw = w_new - w
    assert rho == pytest.approx(0.5 * np.sum(dw * (h @ dw)), rel=1e-9)
    # The Consumer step and the saliency agree with the closed form.
    c = Consumer("l", w.copy(), hinv.copy(), channel_rows(np.tile(np.arange(6), 2), 6))
    assert c.saliency(np.ones(6, bool))[2] == pytest.approx(rho, rel=1e-9)
    assert c.remove(q) == pytest.approx(rho, rel=1e-9)
    np.testing.assert_allclose(c.w, direct, rtol=1e-9, atol=1e-12)


def test_obs_removal_beats_no_compensation_and_magnitude_on_correlated_inputs():
    x = correlated_inputs(seed=3)
    w = np.random.default_rng(4).normal(size=(12, 5))
    h = hessian(x) + 1e-4 * np.eye(12) * np.mean(np.diag(hessian(x)))
    rows = channel_rows(np.tile(np.arange(6), 2), 6)
    c = Consumer("l", w.copy(), np.linalg.inv(h), rows)
    sal = c.saliency(np.ones(6, bool))
    best = int(np.argmin(sal))
    c.remove(rows[best])
    err_obs = reconstruction_error(w, c.w, x.T @ x)[0]
    # Same channel, weights only zeroed:
    zeroed = w.copy()
    zeroed[rows[best]] = 0
    err_zero = reconstruction_error(w, zeroed, x.T @ x)[0]
    # Magnitude choice (smallest row-group norm), zeroed:
    mag = int(np.argmin([np.sum(w[r] ** 2) for r in rows]))
    by_mag = w.copy()
    by_mag[rows[mag]] = 0
    err_mag = reconstruction_error(w, by_mag, x.T @ x)[0]
    assert err_obs < 0.5 * err_zero and err_obs < 0.5 * err_mag
    # The OBS loss is the (1/n-scaled) reconstruction error plus the damping penalty.
    dw = c.w - w
    assert sal[best] == pytest.approx(0.5 * np.sum(dw * (h @ dw)), rel=1e-9)
    assert err_obs / len(x) <= sal[best] <= err_obs / len(x) + 1e-4 * np.mean(np.diag(hessian(x))) * np.sum(dw ** 2)


def test_greedy_downdates_equal_recomputing_the_inverse_from_scratch():
    x = correlated_inputs(n=300, channels=8, taps=3, seed=5)
    d = 24
    h = hessian(x) + 0.01 * np.mean(np.diag(hessian(x))) * np.eye(d)
    w = np.random.default_rng(6).normal(size=(d, 7))
    rows = channel_rows(np.tile(np.arange(8), 3), 8)
    colw = np.random.default_rng(7).uniform(0.5, 2.0, size=7)
    c = Consumer("l", w.copy(), np.linalg.inv(h), rows, colw)
    order, losses = greedy_path([c], 5, per_step=1)
    removed = rows[order].reshape(-1)
    keep = np.setdiff1d(np.arange(d), removed)
    np.testing.assert_allclose(c.hinv[np.ix_(keep, keep)], np.linalg.inv(h[np.ix_(keep, keep)]), rtol=1e-8, atol=1e-10)
    assert np.all(c.hinv[removed] == 0) and np.all(c.hinv[:, removed] == 0)
    # Composed compensations == one least-squares refit on the kept rows.
    np.testing.assert_allclose(c.w, compensate(w, h, removed), rtol=1e-8, atol=1e-10)
    # Each step was the cheapest channel given the earlier removals (brute force).
    hinv, cur, gone = np.linalg.inv(h), w.copy(), []
    for k, ch in enumerate(order):
        trial = {}
        for cand in sorted(set(range(8)) - set(gone)):
            q = rows[cand]
            b = hinv[np.ix_(q, q)]
            trial[cand] = 0.5 * np.sum(colw * cur[q] * np.linalg.solve(b, cur[q]))
        assert min(trial, key=trial.get) == ch and trial[ch] == pytest.approx(losses[k], rel=1e-8)
        q = rows[ch]
        b = hinv[np.ix_(q, q)]
        cur = cur - hinv[:, q] @ np.linalg.solve(b, cur[q])
        cur[q] = 0
        hinv = hinv - hinv[:, q] @ np.linalg.solve(b, hinv[q])
        gone.append(ch)
    # Several channels per step: same kind of result, fewer steps.
    c2 = Consumer("l", w.copy(), np.linalg.inv(h), rows, colw)
    order2, losses2 = greedy_path([c2], 4, per_step=2)
    assert len(set(order2.tolist())) == 4 and losses2[0] == losses2[1]
    rem2 = rows[order2].reshape(-1)
    np.testing.assert_allclose(c2.w, compensate(w, h, rem2), rtol=1e-8, atol=1e-10)


def test_multi_consumer_saliency_is_the_sum_over_consumers():
    rng = np.random.default_rng(8)
    x1, x2 = correlated_inputs(seed=9), correlated_inputs(seed=10)[:, :6]  # a 2-tap and a 1-tap consumer
    h1, h2 = hessian(x1) + 1e-3 * np.eye(12), hessian(x2) + 1e-3 * np.eye(6)
    w1, w2 = rng.normal(size=(12, 3)), rng.normal(size=(6, 4))
    c1 = Consumer("a", w1.copy(), np.linalg.inv(h1), channel_rows(np.tile(np.arange(6), 2), 6))
    c2 = Consumer("b", w2.copy(), np.linalg.inv(h2), channel_rows(np.arange(6), 6))
    s = c1.saliency(np.ones(6, bool)) + c2.saliency(np.ones(6, bool))
    order, losses = greedy_path([c1, c2], 1)
    assert order[0] == int(np.argmin(s)) and losses[0] == pytest.approx(s.min(), rel=1e-9)


def test_compensation_reproduces_the_output_when_a_channel_is_a_linear_combination():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(500, 5))
    x[:, 3] = 0.7 * x[:, 0] - 1.3 * x[:, 4]  # channel 3 carries no new information
    w = rng.normal(size=(5, 4))
    h = hessian(x)
    _, hinv, lam, dead = robust_inverse(h, 1e-10)
    c = Consumer("l", w.copy(), hinv, channel_rows(np.arange(5), 5))
    sal = c.saliency(np.ones(5, bool))
    assert int(np.argmin(sal)) in (0, 3, 4) and sal[3] < 1e-6 * sal.max()
    c.remove(np.array([3]))
    err, ref = reconstruction_error(w, c.w, x.T @ x)
    assert err / ref < 1e-8
    np.testing.assert_allclose(x @ c.w, x @ w, rtol=1e-5, atol=1e-6)


def test_dead_rows_cost_nothing_and_do_not_move():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(200, 4))
    x[:, 1] = 0.0  # dead input
    h_d, hinv, _, dead = robust_inverse(hessian(x), 0.01)
    assert dead.tolist() == [False, True, False, False]
    w = rng.normal(size=(4, 3))
    w_scored = w.copy()
    w_scored[dead] = 0.0
    c = Consumer("l", w_scored, hinv, channel_rows(np.arange(4), 4))
    assert c.saliency(np.ones(4, bool))[1] == 0.0
    new = compensate(w, h_d, np.array([0]))
    assert np.all(new[1] == w[1])  # a dead row is decoupled from the rest


def test_robust_inverse_redampens_singular_hessians_then_gives_up(caplog):
    rng = np.random.default_rng(13)
    z = rng.normal(size=(50, 3))
    h = z @ rng.normal(size=(3, 8))
    h = h.T @ h  # rank 3 of 8: singular without dampening
    with caplog.at_level(logging.WARNING):
        hd, hinv, lam, _ = robust_inverse(h, 0.0, name="conv_x")
    assert lam > 0 and "conv_x" in caplog.text and "retrying" in caplog.text
    np.testing.assert_allclose(hd @ hinv, np.eye(8), atol=1e-6)
    with pytest.raises(ValueError, match=r"conv_x: Hessian .* after 0 retries") as e:
        robust_inverse(h, 0.0, max_retries=0, name="conv_x")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="NaN/Inf"):
        robust_inverse(np.full((3, 3), np.nan), 0.01)
    hd2, _, lam2, _ = robust_inverse(np.diag([1.0, 1e-14]), 0.0, max_cond=1e6)
    assert lam2 >= 1e-4  # ill-conditioned (cond 1e14) -> re-dampened


def test_channel_rows_and_scores():
    rows = channel_rows(np.array([1, 0, -1, 1, 0, -1]), 2)
    assert rows.tolist() == [[1, 4], [0, 3]]
    with pytest.raises(ValueError, match="unequal"):
        channel_rows(np.array([0, 0, 1]), 2)
    s = path_scores(5, np.array([3, 1, 4]), np.array([2.0, 1.0, 5.0]))
    assert s.tolist() == [np.inf, 2.0, np.inf, 2.0, 5.0]  # running max along the path
    assert rank_scores(5, np.array([3, 1, 4])).tolist() == [5.0, 1.0, 5.0, 0.0, 2.0]


def test_blas_threads_context_restores():
    a = np.random.default_rng(0).normal(size=(64, 64))
    with blas_threads(1):
        b = a @ a
    np.testing.assert_allclose(b, a @ a, rtol=1e-12)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "float32"])
def test_in_place_downdate_matches_numpy(layout):
    rng = np.random.default_rng(13)
    base = rng.normal(size=(40, 40))
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(3, 20))  # c [30, 20]: not square
    c = {"C": np.ascontiguousarray(base[:30, :20]), "F": np.asfortranarray(base[:30, :20]),
         "strided": base[:30, :20], "float32": base[:30, :20].astype(np.float32)}[layout]
    want = c - a @ b
    ptr = c.__array_interface__["data"][0]
    subtract_product(c, a, b)
    assert c.__array_interface__["data"][0] == ptr  # updated in place
    np.testing.assert_allclose(c, want, rtol=1e-6 if layout == "float32" else 1e-12, atol=1e-6)
