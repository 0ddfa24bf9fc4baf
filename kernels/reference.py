"""Plain-jnp reference for every Block-ELL kernel: the dense masked product.

``Y = X @ densify(W)``, with padding slots contributing nothing. Gradients come
from ``jax`` autodiff of this expression; every kernel is tested against it.
"""

from __future__ import annotations

import jax
from jax import lax

from kernels.block_ell import BlockELLMeta, densify
from kernels.xla import acc_dtype

__all__ = ["reference_matmul"]


def reference_matmul(x: jax.Array, values: jax.Array, col_idx: jax.Array,
                     meta: BlockELLMeta, *, precision=None) -> jax.Array:
    """Y [M, N] = X [M, K] @ W [K, N] through a dense W (float32 accumulation)."""
    w = densify(values, col_idx, meta)
    y = lax.dot_general(x, w.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=acc_dtype(x.dtype))
    return y.astype(x.dtype)
