"""Balanced block pruning of W [K, N] into Block-ELL (equal blocks per block-row).

Selection keeps, in every block-row, the ``keep = round((1 - sparsity) * C)`` (at least
1) highest-scoring b x b blocks; ties go to the lower block-column. The scores are the
blocks' Frobenius norms (magnitude) unless the caller brings its own: the block-OBS
saliency and compensation from the layer Hessian live in the OBS engine,
:mod:`hobs_jax.obs.block`, which shares its dampening, dead-input and inverse safeguards
with the channel OBS (this package depends on jax only, so it takes scores and refit
weights as arrays).

Convolutions: a 1x1 conv kernel HWIO [1, 1, Cin, Cout] is W [Cin, Cout]; a k x k
kernel is pruned as its im2col matrix (``kernels.conv.conv_kernel_to_matrix``).
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
    "padded_blocks",
    "prune_magnitude",
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


def padded_blocks(w: np.ndarray, b: int) -> np.ndarray:
    """[R, C, b, b] float64 blocks of w [K, N] zero-padded to multiples of b."""
    k, n = w.shape
    r_blocks, c_blocks = -(-k // b), -(-n // b)
    wp = np.zeros((r_blocks * b, c_blocks * b), np.float64)
    wp[:k, :n] = w
    return wp.reshape(r_blocks, b, c_blocks, b).transpose(0, 2, 1, 3)


def block_norms(w: Any, block: int) -> np.ndarray:
    """[R, C] Frobenius norm of each b x b block of W [K, N] (zero-padded)."""
    b = check_block_size(block)
    return np.sqrt(np.sum(padded_blocks(_as_matrix(w), b) ** 2, axis=(2, 3)))


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


def prune_magnitude(w: Any, block: int, sparsity: float) -> BlockELL:
    """Balanced magnitude pruning: keep the largest-norm blocks of every row."""
    check_sparsity(sparsity)
    w = _as_matrix(w)
    b = check_block_size(block)
    scores = block_norms(w, b)
    keep = keep_per_row(scores.shape[1], sparsity)
    return BlockELL.from_dense(w, b, mask=select_balanced(scores, keep), slots=keep)


def prune(w: Any, block: int, sparsity: float, *, scores: Any = None, values: Any = None) -> BlockELL:
    """Balanced block pruning of W [K, N]: keep the highest ``scores`` [R, C] of every
    block-row (default: block norms, i.e. :func:`prune_magnitude`); ``values`` [K, N]
    (e.g. compensated weights) are stored for the kept blocks instead of ``w``."""
    check_sparsity(sparsity)
    w = _as_matrix(w)
    b = check_block_size(block)
    scores = block_norms(w, b) if scores is None else np.asarray(scores, np.float64)
    r_blocks, c_blocks = -(-w.shape[0] // b), -(-w.shape[1] // b)
    if scores.shape != (r_blocks, c_blocks):
        raise ValueError(f"scores.shape={scores.shape} must be (R, C)=({r_blocks}, {c_blocks})")
    keep = keep_per_row(c_blocks, sparsity)
    new = w if values is None else np.asarray(values, w.dtype)
    if new.shape != w.shape:
        raise ValueError(f"values.shape={new.shape} must be w.shape={w.shape}")
    return BlockELL.from_dense(new, b, mask=select_balanced(scores, keep), slots=keep)
