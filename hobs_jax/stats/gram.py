"""Per-batch Gram matrices X^T X of a layer's input rows (jit-traceable, pure jnp).

A conv's Gram is one matmul over its channel-major im2col patches
(:func:`hobs_jax.stats.layers.conv_patches`), permuted afterwards to the HWIO row order
(tap row, tap col, channel). (A shift-correlation formulation for stride-1 'same' convs,
``G_delta = sum_q x[q] x[q + delta]^T`` plus border corrections, needs 3-5x fewer flops
on paper; measured here it was no faster - the products are memory-bound on CPU - and
its 81 small blocks per layer made XLA compile ResNet-20's calibration step in ~100 s
instead of ~8 s, so it was dropped.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def gram_rows(rows: Array) -> Array:
    """[n, d] -> [d, d]: sum over rows of x x^T."""
    return jnp.einsum("nd,ne->de", rows, rows, precision=_HI)


def gram_conv(patches: Array) -> Array:
    """[n, C, kk] channel-major patches -> [kk*C, kk*C] Gram in (tap, channel) order."""
    n, c, kk = patches.shape
    g = gram_rows(patches.reshape(n, c * kk))
    return g.reshape(c, kk, c, kk).transpose(1, 0, 3, 2).reshape(kk * c, kk * c)


def gram_depthwise(rows: Array) -> Array:
    """[n, C, kk] per-channel patches -> [C, kk, kk] per-channel Grams."""
    return jnp.einsum("nck,ncl->ckl", rows, rows, precision=_HI)
