"""Block OBS for Block-ELL: balanced block pruning of W [K, N] scored and compensated by
the layer Hessian, with the channel OBS's numerical safeguards.

Saliency (Optimal Brain Surgeon for a group of weights, as in OBC): for one output
column w_j the layer loss is ``E = 1/2 (w_j - w'_j)^T H (w_j - w'_j)`` with ``H = 2/n
X^T X`` [K, K] of the layer *inputs*; removing the rows Q of a b x b block (its K-block)
with the optimal update of every other weight of the column costs
``1/2 w_Qj^T [(H^-1)_QQ]^-1 w_Qj``, and the block saliency sums it over the block's b
columns::

    S[r, c] = 1/2 tr(W_rc^T [(H^-1)_rr]^-1 W_rc)                       [R, C]

Selection (:func:`kernels.prune.select_balanced`) keeps the ``keep`` highest-scoring
blocks of every block-row (ties to the lower block-column). Compensation refits the kept
weights of every output column on its kept support F (pruned support P)::

    w'_F = w_F + (H_FF)^-1 H_FP w_P,      w'_P = 0

(the multi-weight OBS update restricted to F, = -H^-1_{:,P} [(H^-1)_PP]^-1 w_P); the b
columns of a block-column share F, so one Cholesky solve serves them. Saliencies are
one-shot: the balanced per-row constraint couples the columns, so OBC's per-column greedy
re-scoring does not apply directly.

Safeguards shared with the channel OBS (:mod:`hobs_jax.obs.channel`): dead inputs (zero
diagonal of H) get diagonal 1 and their rows of W count as zero (they carry no signal on
the calibration data, so pruning them is free); the dampening is ``damp * mean(diag H)``
(SparseGPT's ``percdamp``); the inverse goes through
:func:`hobs_jax.obs.linalg.robust_inverse` (Cholesky, re-dampened when singular or
ill-conditioned, a one-line error when it stays so). Rows padded up to a multiple of b
get an identity Hessian (independent of the real rows). Float64 numpy throughout:
deterministic, bit for bit.

References: E. Frantar, D. Alistarh, "Optimal Brain Compression", NeurIPS 2022 (OBC);
B. Hassibi, D. Stork, "Optimal Brain Surgeon", NIPS 1993. docs/block_ell.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from hobs_jax.obs.linalg import robust_inverse
from kernels import BlockELL, check_block_size, check_sparsity, keep_per_row, padded_blocks, select_balanced
from kernels import prune as block_prune

__all__ = ["compensate", "hessian_from_inputs", "prune", "saliency"]


def hessian_from_inputs(x: Any) -> np.ndarray:
    """H = 2/n X^T X [K, K] (float64) from layer inputs X [n, K] (or [..., K])."""
    x = np.asarray(x, np.float64)
    x = x.reshape(-1, x.shape[-1])
    return 2.0 / x.shape[0] * (x.T @ x)


def _matrix(w: Any) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w.shape={w.shape} must be [K, N]")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"w.dtype={w.dtype} must be floating")
    return w


def _solved(hessian: Any, k: int, padded: int, damp: float, max_retries: int):
    """(H_damped [Kp, Kp], H_damped^-1 [Kp, Kp], dead [K]) identity-padded to ``padded``."""
    h = np.asarray(hessian, np.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian.shape={h.shape} must be (K, K)=({k}, {k})")
    if not float(damp) >= 0.0:
        raise ValueError(f"damp={damp!r} must be >= 0")
    hd, hinv, _, dead = robust_inverse(h, float(damp), max_retries=max_retries, name="block OBS")
    hd_p, hinv_p = np.eye(padded), np.eye(padded)
    hd_p[:k, :k], hinv_p[:k, :k] = hd, hinv
    return hd_p, hinv_p, dead


def _live_blocks(w: np.ndarray, dead: np.ndarray, b: int) -> np.ndarray:
    """[R, C, b, b] blocks of ``w`` with dead input rows zeroed."""
    w = np.array(w, np.float64)
    w[dead] = 0.0
    return padded_blocks(w, b)


def saliency(w: Any, hessian: Any, block: int, *, damp: float = 0.01, max_retries: int = 6) -> np.ndarray:
    """[R, C] block-OBS saliency ``1/2 tr(W_rc^T [(H^-1)_rr]^-1 W_rc)`` (module doc)."""
    b = check_block_size(block)
    w = _matrix(w)
    k = w.shape[0]
    r_blocks = -(-k // b)
    _, hinv, dead = _solved(hessian, k, r_blocks * b, damp, max_retries)
    blocks = _live_blocks(w, dead, b)
    diag = np.stack([hinv[r * b:(r + 1) * b, r * b:(r + 1) * b] for r in range(r_blocks)])
    a = np.linalg.inv(diag)  # [R, b, b], [(H^-1)_rr]^-1
    return 0.5 * np.einsum("rcij,rik,rckj->rc", blocks, a, blocks)


def compensate(w: Any, hessian: Any, mask: Any, block: int, *, damp: float = 0.01,
               max_retries: int = 6) -> np.ndarray:
    """W' [K, N] float64: pruned blocks zeroed, kept weights refit per block-column
    (``w'_F = w_F + H_FF^-1 H_FP w_P``, module doc); dead input rows zero."""
    b = check_block_size(block)
    w = _matrix(w)
    k, n = w.shape
    r_blocks, c_blocks = -(-k // b), -(-n // b)
    mask = np.asarray(mask, bool)
    if mask.shape != (r_blocks, c_blocks):
        raise ValueError(f"mask.shape={mask.shape} must be (R, C)=({r_blocks}, {c_blocks})")
    hd, _, dead = _solved(hessian, k, r_blocks * b, damp, max_retries)
    wp = _live_blocks(w, dead, b).transpose(0, 2, 1, 3).reshape(r_blocks * b, c_blocks * b)
    out = np.zeros_like(wp)
    for c in range(c_blocks):
        rows_kept = np.repeat(mask[:, c], b)
        cols = slice(c * b, (c + 1) * b)
        f, p = np.flatnonzero(rows_kept), np.flatnonzero(~rows_kept)
        if f.size == 0:
            continue
        wf = wp[f, cols]
        if p.size:
            cf = scipy.linalg.cho_factor(hd[np.ix_(f, f)], lower=True)
            wf = wf + scipy.linalg.cho_solve(cf, hd[np.ix_(f, p)] @ wp[p, cols])
        out[f, cols] = wf
    return out[:k, :n]


def prune(w: Any, hessian: Any, block: int, sparsity: float, *, damp: float = 0.01,
          compensate_kept: bool = True) -> BlockELL:
    """Balanced block-OBS pruning of W [K, N] (saliency, selection, compensation unless
    ``compensate_kept`` is False) into Block-ELL, in w's dtype."""
    check_sparsity(sparsity)
    w = _matrix(w)
    b = check_block_size(block)
    scores = saliency(w, hessian, b, damp=damp)
    new_w = None
    if compensate_kept:
        mask = select_balanced(scores, keep_per_row(scores.shape[1], sparsity))
        new_w = compensate(w, hessian, mask, b, damp=damp)
    return block_prune(w, b, sparsity, scores=scores, values=new_w)
