"""Cross statistics between a pruned network and its dense original, for refitting a
layer to the *dense* output from the *pruned* network's own input.

H-OBS's compensation solves, per consumer layer, ``min ||X W - X_K W'_K||`` with X the
dense network's input to that layer: exact for one layer, but once upstream layers are
pruned the layer no longer sees X. For one layer, with P [n, d] its input rows in the
pruned network and Y = D W (+ b) [n, m] the dense layer's *output* rows,

    A = P^T P  [d, d]    and    R = P^T Y  [d, m]     (the kernel matrix's row order)

(plus ``P^T 1`` and ``1^T Y`` when the layer has a bias) give the refit
``W'_K = (A_KK + lambda I)^{-1} R_K``, minimizing ``||Y - P_K W'_K||``: the error against
the dense layer's output (the data-driven reconstruction of ThiNet / CP, Luo et al. ICCV
2017, He et al. ICCV 2017; OBC's sequential mode). ``R = P^T D W`` is the same right-hand
side as ``B W`` with the cross Gram ``B = P^T D``, computed from the dense output (``n d m``
flops, a ninth of ``P^T D`` for a 3x3 conv with as many outputs as inputs). ``A`` is the
layer Gram of :mod:`hobs_jax.stats.gram` (2-D shift for stride-1 convs).

:func:`cross_stats` takes ``A`` from calibration's own compiled Gram reduction
(:func:`hobs_jax.stats.hessian.batched_gram`, in calibration-sized batches), and ``R``
from one function jitted per layer *shape* (path, call order and BatchNorm are dropped
from the static key), so the 3x3 convs of one ResNet stage share one executable. Building
``A`` inside a second executable of its own cost a first H-OBS call on the Fashion-MNIST
ResNet-56 ~5 s of XLA compile time (``benchmarks/hobs_compiles.py``; ``R`` alone compiles
in about a quarter of the time the two did together). Layers are refit one after the
other in forward order, each seeing its upstream already refit
(:mod:`hobs_jax.obs.refit`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.stats.gram import chunk_size, chunked_sum, tn_product
from hobs_jax.stats.hessian import batched_gram
from hobs_jax.stats.layers import LayerInfo, conv_output_hw, conv_slices, dense_rows, shape_key, sliceable

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CrossStats:
    """``a`` = P^T P [d, d]; ``r`` = P^T Y [d, m]; ``psum`` = P^T 1 [d] and ``ysum`` =
    1^T Y [m] (bias layers only, else None); ``count`` rows n."""

    info: LayerInfo
    a: np.ndarray
    r: np.ndarray
    psum: np.ndarray | None
    ysum: np.ndarray | None
    count: int

    def augmented(self) -> tuple[np.ndarray, np.ndarray]:
        """(A [d', d'], R [d', m]) float64, d' = d + 1 with a constant-1 input appended
        when the layer has a bias (then the last row of R is 1^T Y)."""
        a, r = self.a.astype(np.float64), self.r.astype(np.float64)
        if not self.info.use_bias:
            return a, r
        assert self.psum is not None and self.ysum is not None  # kept for layers with a bias
        d = a.shape[0]
        aa = np.empty((d + 1, d + 1))
        ps = self.psum.astype(np.float64)
        aa[:d, :d], aa[:d, d], aa[d, :d], aa[d, d] = a, ps, ps, self.count
        return aa, np.concatenate([r, self.ysum.astype(np.float64)[None]], axis=0)


def transposed_product(info: LayerInfo, x: jax.Array, y: jax.Array) -> jax.Array:
    """P^T Y [d, m] of a conv/dense layer: ``x`` its input batch, ``y`` [..., m] output
    rows in the layer's output layout (conv: [N, Ho, Wo, m]), in the kernel matrix's row
    order. Convs without input dilation: strided-slice im2col rows times ``y``, a few
    images at a time on CPU (:func:`~hobs_jax.stats.gram.chunked_sum`); input-dilated
    convs: the weight gradient of ``sum(conv(x, K) * y)`` (XLA's, ~5x slower on CPU)."""
    if info.kind == "dense":
        rows = dense_rows(info, x)
        return jnp.einsum("nd,nm->dm", rows, y.reshape(rows.shape[0], -1), precision=_HI)
    if info.kind != "conv":
        raise ValueError(f"layer {info.name}: no P^T Y for {info.kind} layers")
    y = y.astype(x.dtype)
    if sliceable(info):
        ho, wo = conv_output_hw(info, x.shape[1:3])

        def part(xc, yc):
            return tn_product(conv_slices(info, xc), yc)

        return chunked_sum(part, (x, y), chunk_size(int(x.shape[0]), ho * wo * (info.d_in + info.d_out)))

    def conv(k):
        return jax.lax.conv_general_dilated(
            x, k, info.strides, info.padding, lhs_dilation=info.lhs_dilation,
            rhs_dilation=info.rhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HI)

    _, vjp = jax.vjp(conv, jnp.zeros(info.kernel_shape, x.dtype))
    return vjp(y)[0].reshape(info.d_in, info.d_out)


@functools.partial(jax.jit, static_argnums=0)
def _right_hand_side(info: LayerInfo, x: jax.Array, y: jax.Array):
    r = transposed_product(info, x, y)
    ysum = y.reshape(-1, info.d_out).sum(0) if info.use_bias else None
    return r, ysum, jnp.all(jnp.isfinite(r))


def cross_stats(info: LayerInfo, pruned_input: jax.Array, dense_output: jax.Array, *,
                batch_size: int = 256) -> CrossStats:
    """:class:`CrossStats` of one conv/dense layer from the pruned network's input batch
    to it (``[N, H, W, C]`` for convs) and the dense layer's output on the same images
    (``[N, Ho, Wo, m]``; Dense: ``[..., m]``). ``A`` is reduced ``batch_size`` images at a
    time (pass calibration's batch size so that its compiled Gram is reused)."""
    if info.kind not in ("conv", "dense"):
        raise ValueError(f"layer {info.name}: cross statistics need a channel-mixing conv or dense "
                         f"layer, not {info.kind}")
    if dense_output.shape[0] != pruned_input.shape[0]:
        raise ValueError(f"layer {info.name}: {pruned_input.shape[0]} pruned inputs but "
                         f"{dense_output.shape[0]} dense outputs")
    r, ysum, ok_r = _right_hand_side(shape_key(info), pruned_input, dense_output)  # dispatched first
    a, s, ok_a, count = batched_gram(info, pruned_input, batch_size)
    if not (ok_a and bool(ok_r)):
        raise ValueError(f"layer {info.name}: non-finite cross statistics (the pruned network's "
                         f"activations overflow)")
    a, s, r, ysum = jax.device_get((a, s, r, ysum))
    return CrossStats(info, np.asarray(a, np.float64), np.asarray(r, np.float64),
                      None if s is None else np.asarray(s, np.float64),
                      None if ysum is None else np.asarray(ysum, np.float64), count)
