"""Cross statistics between a pruned network and its dense original, for refitting a
layer to the *dense* output from the *pruned* network's own input.

H-OBS's compensation solves, per consumer layer, ``min ||X W - X_K W'_K||`` with X the
dense network's input to that layer: exact for one layer, but once upstream layers are
pruned the layer no longer sees X. For one layer, with P its input rows in the pruned
network and D in the dense one,

    A = P^T P    and    B = P^T D        ([d, d] each, the kernel matrix's row order)

(plus the column sums of both when the layer has a bias) give the refit
``W'_K = (A_KK + lambda I)^{-1} B_{K,:} W``, minimizing ``||D W - P_K W'_K||``: the error
against the dense layer's output (the data-driven reconstruction of ThiNet / CP, Luo et
al. ICCV 2017, He et al. ICCV 2017; OBC's sequential mode). Layers are refit one after
the other in forward order, so each sees its upstream already refit
(:func:`hobs_jax.methods.hobs._propagate`).

The pruned network is given as full-size variables whose removed input rows are zero in
every consumer (H-OBS's ``PruneOutcome.variables``): it computes the same function as
the sliced network, so both run through the same module and one compiled forward.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.stats.gram import chunk_size, chunked_sum
from hobs_jax.stats.layers import (LayerInfo, conv_output_hw, conv_patches, conv_slices, dense_rows,
                                   intercepting, sliceable)

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CrossStats:
    """``a`` = P^T P, ``b`` = P^T D [d, d]; ``psum``/``dsum`` [d] column sums (bias
    layers only, else None); ``count`` rows n."""

    info: LayerInfo
    a: np.ndarray
    b: np.ndarray
    psum: np.ndarray | None
    dsum: np.ndarray | None
    count: int

    def augmented(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) float64, with a constant-1 input appended when the layer has a bias."""
        a, b = self.a.astype(np.float64), self.b.astype(np.float64)
        if not self.info.use_bias:
            return a, b
        d = a.shape[0]
        aa, bb = np.empty((d + 1, d + 1)), np.empty((d + 1, d + 1))
        ps, ds = self.psum.astype(np.float64), self.dsum.astype(np.float64)
        aa[:d, :d], aa[:d, d], aa[d, :d], aa[d, d] = a, ps, ps, self.count
        bb[:d, :d], bb[:d, d], bb[d, :d], bb[d, d] = b, ps, ds, self.count
        return aa, bb


@functools.lru_cache(maxsize=4)
def _capture_fn(model: nn.Module, paths: tuple[tuple[str, ...], ...]):
    """jit(variables, x) -> {path: the input of that layer} (first call of each)."""
    want = set(paths)

    def fwd(variables, x):
        seen: dict = {}

        def grab(mod, xin, y):
            p = tuple(mod.path)
            if p in want and p not in seen:
                seen[p] = xin

        with nn.intercept_methods(intercepting(grab)):
            model.apply(variables, x, train=False)
        return {"/".join(p): seen[p] for p in paths}
    return jax.jit(fwd)


def capture(model: nn.Module, variables: Mapping, images: np.ndarray,
            paths: Sequence[tuple[str, ...]], batch_size: int = 256) -> dict[tuple[str, ...], list]:
    """{path: [per-batch input of that layer]} over ``images`` (eval mode, on device)."""
    fn = _capture_fn(model, tuple(tuple(p) for p in paths))
    out: dict[tuple[str, ...], list] = {tuple(p): [] for p in paths}
    for i in range(0, len(images), batch_size):
        got = fn(variables, jnp.asarray(images[i:i + batch_size], jnp.float32))
        for p in out:
            out[p].append(got["/".join(p)])
    return out


@functools.partial(jax.jit, static_argnums=0)
def _cross_batch(info: LayerInfo, xp: jax.Array, xd: jax.Array):
    if info.kind == "dense":
        rp, rd = dense_rows(info, xp), dense_rows(info, xd)
        a = jnp.einsum("nd,ne->de", rp, rp, precision=_HI)
        b = jnp.einsum("nd,ne->de", rp, rd, precision=_HI)
        return a, b, rp.sum(0), rd.sum(0), rp.shape[0]
    if sliceable(info):
        ho, wo = conv_output_hw(info, xp.shape[1:3])

        def part(xpc, xdc):
            rp, rd = conv_slices(info, xpc), conv_slices(info, xdc)
            return (jnp.einsum("nhwd,nhwe->de", rp, rp, precision=_HI),
                    jnp.einsum("nhwd,nhwe->de", rp, rd, precision=_HI),
                    rp.sum((0, 1, 2)), rd.sum((0, 1, 2)))

        a, b, sp, sd = chunked_sum(part, (xp, xd), chunk_size(int(xp.shape[0]), 2 * ho * wo * info.d_in))
        return a, b, sp, sd, xp.shape[0] * ho * wo
    pp, pd = conv_patches(info, xp), conv_patches(info, xd)  # [n, C, kk] channel-major
    n, c, kk = pp.shape
    fp, fd = pp.reshape(n, c * kk), pd.reshape(n, c * kk)

    def order(g):  # channel-major -> the kernel's (tap, channel) row order
        return g.reshape(c, kk, c, kk).transpose(1, 0, 3, 2).reshape(kk * c, kk * c)

    a = order(jnp.einsum("nd,ne->de", fp, fp, precision=_HI))
    b = order(jnp.einsum("nd,ne->de", fp, fd, precision=_HI))
    return a, b, fp.sum(0).reshape(c, kk).T.reshape(-1), fd.sum(0).reshape(c, kk).T.reshape(-1), n


def cross_stats(info: LayerInfo, pruned_inputs: list, dense_inputs: list) -> CrossStats:
    """:class:`CrossStats` of one conv/dense layer from matching lists of input batches."""
    if info.kind not in ("conv", "dense"):
        raise ValueError(f"layer {info.name}: cross statistics need a channel-mixing conv or dense "
                         f"layer, not {info.kind}")
    a = b = ps = ds = None
    n = 0
    for xp, xd in zip(pruned_inputs, dense_inputs):
        ai, bi, psi, dsi, ni = _cross_batch(info, xp, xd)
        a, b = (ai, bi) if a is None else (a + ai, b + bi)
        ps, ds = (psi, dsi) if ps is None else (ps + psi, ds + dsi)
        n += int(ni)
    a, b, ps, ds = (np.asarray(v, np.float64) for v in jax.device_get((a, b, ps, ds)))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"layer {info.name}: non-finite cross statistics (the pruned network's "
                         f"activations overflow)")
    return CrossStats(info, a, b, ps if info.use_bias else None, ds if info.use_bias else None, n)
