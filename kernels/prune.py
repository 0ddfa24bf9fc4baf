"""Balanced block pruning of W [K, N] into Block-ELL (equal blocks per block-row).

Two scores, one selection rule:

* magnitude: the Frobenius norm of each b x b block;
* block-OBS saliency from the layer Hessian H [K, K] of the layer *inputs*
  (H = 2/n sum_i x_i x_i^T, supplied by the caller). For one output column w_j the
  layer loss is E = 1/2 (w_j - w'_j)^T H (w_j - w'_j). Removing the rows Q of a
  block (its K-block) with the optimal update of all other weights of the column
  costs (Optimal Brain Surgeon for a group of weights, as in OBC)::

      dE_j = 1/2 w_Qj^T [(H^-1)_QQ]^-1 w_Qj

  and the block saliency sums it over the block's b columns:
  ``S[r, c] = 1/2 tr(W_rc^T [(H^-1)_rr]^-1 W_rc)``.

Selection keeps, in every block-row, the ``keep = round((1 - sparsity) * C)``
(at least 1) highest-scoring blocks; ties go to the lower block-column.

Compensation (``compensate=True``) then re-fits the kept weights of every output
column on its kept support F (its pruned support P = the other rows): minimizing
(w' - w)^T H (w' - w) subject to w'_P = 0 gives::

      w'_F = w_F + (H_FF)^-1 H_FP w_P,      w'_P = 0,

which is the multi-weight OBS update restricted to the kept support (identical
to -H^-1_{:,P} [(H^-1)_PP]^-1 w_P). Columns of one block-column share F, so one
solve per block-column serves its b columns. Saliencies are one-shot (computed
once from the unpruned W and H^-1): the balanced per-row constraint couples the
columns, so OBC's per-column greedy re-scoring does not apply directly.

Dampening: H + lambda * mean(diag H) * I (lambda = ``damp``, 0.01 by default, the
GPTQ/OBC convention); rows padded up to a multiple of b get an identity Hessian.
All of this runs on the host in float64 numpy: deterministic, bit-for-bit.

Reference: E. Frantar, D. Alistarh, "Optimal Brain Compression: A Framework for
Accurate Post-Training Quantization and Pruning", NeurIPS 2022 (OBC); B. Hassibi,
D. Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
NIPS 1992.

Convolutions: a 1x1 conv kernel HWIO [1, 1, Cin, Cout] is W [Cin, Cout]; a k x k
kernel is pruned as its im2col matrix (``kernels.conv.conv_kernel_to_matrix``)
with the Hessian of the im2col patches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.block_ell import BlockELL, check_block_size

__all__ = [
    "check_sparsity",
    "keep_per_row",
    "block_norms",
    "select_balanced",
    "hessian_from_inputs",
    "damp_hessian",
    "obs_saliency",
    "obs_compensate",
    "prune_magnitude",
    "prune_obs",
    "prune",
]


def check_sparsity(sparsity: Any) -> float:
    """Returns ``sparsity`` as a float in [0, 1) or raises a one-line ValueError."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1)") from None
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity={sparsity!r} must be in [0, 1)")
    return s


def keep_per_row(n_col_blocks: int, sparsity: float) -> int:
    """Blocks kept per block-row: round((1 - sparsity) * C), at least 1."""
    s = check_sparsity(sparsity)
    return int(min(n_col_blocks, max(1, np.floor((1.0 - s) * n_col_blocks + 0.5))))


def _as_matrix(w: Any) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w.shape={w.shape} must be [K, N]")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"w.dtype={w.dtype} must be floating")
    return w


def _padded_blocks(w: np.ndarray, b: int) -> np.ndarray:
    """[R, C, b, b] float64 blocks of w zero-padded to multiples of b."""
    k, n = w.shape
    r_blocks, c_blocks = -(-k // b), -(-n // b)
    wp = np.zeros((r_blocks * b, c_blocks * b), np.float64)
    wp[:k, :n] = w
    return wp.reshape(r_blocks, b, c_blocks, b).transpose(0, 2, 1, 3)


def block_norms(w: Any, block: int) -> np.ndarray:
    """[R, C] Frobenius norm of each b x b block of W [K, N] (zero-padded)."""
    b = check_block_size(block)
    return np.sqrt(np.sum(_padded_blocks(_as_matrix(w), b) ** 2, axis=(2, 3)))


def select_balanced(scores: Any, keep: int) -> np.ndarray:
    """[R, C] bool: the ``keep`` highest scores of every row (ties -> lower column)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores.shape={scores.shape} must be [R, C]")
    if not 0 <= keep <= scores.shape[1]:
        raise ValueError(f"keep={keep} must be in [0, {scores.shape[1]}]")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def hessian_from_inputs(x: Any) -> np.ndarray:
    """H = 2/n X^T X [K, K] (float64) from layer inputs X [n, K] (or [..., K])."""
    x = np.asarray(x, np.float64)
    x = x.reshape(-1, x.shape[-1])
    return 2.0 / x.shape[0] * (x.T @ x)


def _check_hessian(h: Any, k: int) -> np.ndarray:
    h = np.asarray(h, np.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian.shape={h.shape} must be (K, K)=({k}, {k})")
    if not np.all(np.isfinite(h)):
        raise ValueError("hessian has non-finite entries")
    return h


def damp_hessian(h: Any, damp: float = 0.01, padded_k: int | None = None) -> np.ndarray:
    """H + damp * mean(diag H) * I, zero-padded with an identity up to ``padded_k``."""
    if not float(damp) >= 0.0:
        raise ValueError(f"damp={damp!r} must be >= 0")
    h = np.asarray(h, np.float64)
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h))) if k else 0.0
    lam = float(damp) * (mean_diag if mean_diag > 0 else 1.0)
    kp = padded_k or k
    out = np.eye(kp, dtype=np.float64)
    out[:k, :k] = h + lam * np.eye(k)
    return out


def obs_saliency(w: Any, hessian: Any, block: int, *, damp: float = 0.01) -> np.ndarray:
    """[R, C] block-OBS saliency 1/2 tr(W_rc^T [(H^-1)_rr]^-1 W_rc) (module docstring)."""
    b = check_block_size(block)
    w = _as_matrix(w)
    h = _check_hessian(hessian, w.shape[0])
    blocks = _padded_blocks(w, b)
    r_blocks = blocks.shape[0]
    hinv = np.linalg.inv(damp_hessian(h, damp, r_blocks * b))
    diag = np.stack([hinv[r * b:(r + 1) * b, r * b:(r + 1) * b] for r in range(r_blocks)])
    a = np.linalg.inv(diag)  # [R, b, b], [(H^-1)_rr]^-1
    return 0.5 * np.einsum("rcij,rik,rckj->rc", blocks, a, blocks)


def obs_compensate(w: Any, hessian: Any, mask: Any, block: int, *,
                   damp: float = 0.01) -> np.ndarray:
    """W' [K, N]: pruned blocks zeroed, kept weights re-fitted per block-column
    (``w'_F = w_F + H_FF^-1 H_FP w_P``, module docstring). Returns float64."""
    b = check_block_size(block)
    w = _as_matrix(w)
    k, n = w.shape
    h = _check_hessian(hessian, k)
    blocks = _padded_blocks(w, b)
    r_blocks, c_blocks = blocks.shape[:2]
    mask = np.asarray(mask, bool)
    if mask.shape != (r_blocks, c_blocks):
        raise ValueError(f"mask.shape={mask.shape} must be (R, C)=({r_blocks}, {c_blocks})")
    hd = damp_hessian(h, damp, r_blocks * b)
    wp = blocks.transpose(0, 2, 1, 3).reshape(r_blocks * b, c_blocks * b)
    out = np.zeros_like(wp)
    for c in range(c_blocks):
        rows_kept = np.repeat(mask[:, c], b)
        cols = slice(c * b, (c + 1) * b)
        f, p = np.flatnonzero(rows_kept), np.flatnonzero(~rows_kept)
        if f.size == 0:
            continue
        wf = wp[f, cols]
        if p.size:
            wf = wf + np.linalg.solve(hd[np.ix_(f, f)], hd[np.ix_(f, p)] @ wp[p, cols])
        out[f, cols] = wf
    return out[:k, :n]


def prune_magnitude(w: Any, block: int, sparsity: float) -> BlockELL:
    """Balanced magnitude pruning: keep the largest-norm blocks of every row."""
    check_sparsity(sparsity)
    w = _as_matrix(w)
    b = check_block_size(block)
    scores = block_norms(w, b)
    keep = keep_per_row(scores.shape[1], sparsity)
    return BlockELL.from_dense(w, b, mask=select_balanced(scores, keep), slots=keep)


def prune_obs(w: Any, hessian: Any, block: int, sparsity: float, *, damp: float = 0.01,
              compensate: bool = True) -> BlockELL:
    """Balanced block-OBS pruning (saliency + optional compensation), in w's dtype."""
    check_sparsity(sparsity)
    w = _as_matrix(w)
    b = check_block_size(block)
    scores = obs_saliency(w, hessian, b, damp=damp)
    keep = keep_per_row(scores.shape[1], sparsity)
    mask = select_balanced(scores, keep)
    new_w = obs_compensate(w, hessian, mask, b, damp=damp) if compensate else w
    return BlockELL.from_dense(np.asarray(new_w, w.dtype), b, mask=mask, slots=keep)


def prune(w: Any, block: int, sparsity: float, *, method: str = "magnitude",
          hessian: Any = None, damp: float = 0.01, compensate: bool = True) -> BlockELL:
    """Balanced block pruning of W [K, N] by ``method`` ('magnitude' or 'obs')."""
    if method == "magnitude":
        return prune_magnitude(w, block, sparsity)
    if method == "obs":
        if hessian is None:
            raise ValueError("method='obs' needs hessian=[K, K]")
        return prune_obs(w, hessian, block, sparsity, damp=damp, compensate=compensate)
    raise ValueError(f"method={method!r} must be 'magnitude' or 'obs'")
