"""Convolutions as Block-ELL matmuls (im2col).

A conv with kernel HWIO [kh, kw, Cin, Cout] equals ``patches @ W`` where
``patches = im2col(x)`` [N, Ho, Wo, Cin*kh*kw] and W = ``conv_kernel_to_matrix``
[Cin*kh*kw, Cout]. The feature order of the patches is (Cin, kh, kw), the order
``jax.lax.conv_general_dilated_patches`` produces, so W's rows are ordered the same
way. A 1x1 conv is the plain matmul over channels (W = kernel[0, 0]).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_kernel_to_matrix", "matrix_to_conv_kernel", "im2col"]


def conv_kernel_to_matrix(kernel: jax.Array) -> jax.Array:
    """HWIO [kh, kw, Cin, Cout] -> W [Cin*kh*kw, Cout] (rows ordered (Cin, kh, kw))."""
    if kernel.ndim != 4:
        raise ValueError(f"kernel.shape={tuple(kernel.shape)} must be HWIO [kh, kw, Cin, Cout]")
    kh, kw, cin, cout = kernel.shape
    return jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)


def matrix_to_conv_kernel(w: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
    """Inverse of ``conv_kernel_to_matrix``: W [Cin*kh*kw, Cout] -> HWIO."""
    kh, kw = (int(v) for v in kernel_size)
    if w.ndim != 2 or w.shape[0] % (kh * kw):
        raise ValueError(f"w.shape={tuple(w.shape)} is not [Cin*{kh}*{kw}, Cout]")
    cin = w.shape[0] // (kh * kw)
    return jnp.transpose(w.reshape(cin, kh, kw, w.shape[1]), (1, 2, 0, 3))


def im2col(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "VALID",
           dilation: Sequence[int] = (1, 1)) -> jax.Array:
    """NHWC x -> patches [N, Ho, Wo, Cin*kh*kw] matching ``conv_kernel_to_matrix``."""
    if x.ndim != 4:
        raise ValueError(f"x.shape={tuple(x.shape)} must be NHWC")
    return lax.conv_general_dilated_patches(
        x, filter_shape=tuple(kernel_size), window_strides=tuple(strides),
        padding=padding, rhs_dilation=tuple(dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
