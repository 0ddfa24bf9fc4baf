"""Per-batch Gram matrices X^T X of a layer's input rows (jit-traceable, pure jnp).

The im2col rows of a conv are built by :func:`hobs_jax.stats.layers.conv_rows`; the Gram
is one matmul over them. (A shift-correlation formulation for stride-1 'same' convs,
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


def gram_depthwise(rows: Array) -> Array:
    """[n, C, kk] per-channel patches -> [C, kk, kk] per-channel Grams."""
    return jnp.einsum("nck,ncl->ckl", rows, rows, precision=_HI)
