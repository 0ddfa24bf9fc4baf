"""The refit of the OBS engine (H-OBS phase 6, ``propagate`` sweeps): every layer refit to
the dense network's output from the pruned network's own input, one forward pass per sweep.

Every channel-mixing conv/dense layer, in forward order, is refit from the pruned
network's own input P (its upstream already refit) to the dense layer's output Y:
``W'_K = (A_KK + lambda I)^{-1} R_K`` with ``A = P^T P``, ``R = P^T Y``
(:mod:`hobs_jax.stats.cross`), ``lambda = propagate_damp * mean(diag A_KK)``, removed rows
K' set to zero. A layer's input depends only on the layers called before it, so the
refit of the whole network is ONE pass: the pruned network runs eagerly over all
``propagate_images`` images under a Flax method interceptor, and when a target layer is
reached its statistics are taken from the input it receives, it is solved on the host
(float64 Cholesky), and its output is computed with the new weights before the pass goes
on. Every layer therefore sees exactly the input the layer-by-layer definition gives it
(upstream refit, downstream not yet), from one forward instead of one forward per layer.
The dense outputs Y come from one jitted forward of the dense network beforehand.

The statistics are taken over the layer's full input (removed channels included, their
rows dropped at the solve): one compiled shape per layer shape, which costs less than
statistics of the kept channels only would save (docs/results/HISTORY.md).

Sample-starved layers keep their OBS compensation (``min_rows``). A conv sees one row per
output pixel, but a layer after a global pooling (a squeeze-excitation FC, the
classifier) sees ONE row per image: with ``propagate_images`` calibration images and a
layer of d kept inputs, the fit has d unknowns per output from that many rows. Where
the rows are fewer than ``min_rows * d`` the ridge fit reproduces the calibration
images and not the network: it shrinks every input direction the images do not span
to zero, and amplifies directions of small calibration variance (an EfficientNet-B0's
late SE squeeze FCs: docs/hobs.md, Sec. 8, ``benchmarks/hobs_blocks.py --refit``). Such a
layer is left at the
weights phase 5 gave it: OBS compensation anchored at the dense weights, whose dampened
inverse only re-expresses the removed rows through the kept ones.

Memory: the dense outputs of every refit layer on ``propagate_images`` images are held
(ResNet-56 at 28x28, 512 images: ~0.9 GB float32), and the pruned pass holds one batch of
all ``propagate_images`` images' activations.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from hobs_jax.obs.layers import copy_tree, set_leaf
from hobs_jax.stats.cross import CrossStats, cross_stats
from hobs_jax.stats.layers import LAYER_TYPES, LayerInfo, intercepting
from hobs_jax.stats.streams import ordered_map

Path = tuple[str, ...]

__all__ = ["refit_sequential", "solve_refit", "starved"]


def _leaf(tree, path: Sequence[str]):
    node = tree
    for k in path:
        node = node[k]
    return node


def solve_refit(st: CrossStats, removed: np.ndarray, damp: float) -> np.ndarray:
    """[d (+1), m] refit weights: rows ``removed`` zero, the others
    ``(A_KK + damp * mean(diag A_KK) I)^{-1} R_K`` (inputs with a zero diagonal get 1 on it,
    as in :func:`hobs_jax.stats.hessian.dampen`)."""
    a, r = st.augmented()
    keep = np.setdiff1d(np.arange(a.shape[0]), removed)
    akk = a[np.ix_(keep, keep)]
    dead = np.flatnonzero(np.diag(akk) <= 0)
    akk[dead, dead] = 1.0
    akk[np.diag_indices_from(akk)] += float(damp) * float(np.mean(np.diag(akk)))
    try:
        cf = scipy.linalg.cho_factor(akk, lower=True)
    except np.linalg.LinAlgError:
        raise ValueError(f"{st.info.name}: the pruned network's input Gram is not positive "
                         f"definite; raise propagate_damp") from None
    new = np.zeros_like(r)
    new[keep] = scipy.linalg.cho_solve(cf, r[keep])
    return new


@functools.lru_cache(maxsize=4)
def _dense_fn(model: nn.Module, outputs: tuple[Path, ...], inputs: tuple[Path, ...]):
    """jit(variables, x) -> ({name: output}, {name: input}) of the named layers (first
    call of each; eval mode), cached so that repeated refits compile once."""
    want_out, want_in = set(outputs), set(inputs)

    def fwd(v, x):
        outs, ins = {}, {}

        def on_layer(mod, xin, y):
            p = tuple(mod.path)
            if p in want_out and p not in outs:
                outs[p] = y
            if p in want_in and p not in ins:
                ins[p] = xin

        with nn.intercept_methods(intercepting(on_layer)):
            model.apply(v, x, train=False)
        return ({"/".join(p): outs[p] for p in outputs}, {"/".join(p): ins[p] for p in inputs})
    return jax.jit(fwd)


def _dense_pass(model: nn.Module, variables, images: np.ndarray, outputs: Sequence[Path],
                inputs: Sequence[Path], batch_size: int) -> tuple[dict, dict]:
    """({path: output of that layer}, {path: input of that layer}) of the dense network
    on ``images``, one jitted forward per batch of ``batch_size``."""
    f = _dense_fn(model, tuple(outputs), tuple(inputs))

    def one_batch(i):
        return jax.block_until_ready(f(variables, jnp.asarray(images[i:i + batch_size], jnp.float32)))

    parts = list(ordered_map(one_batch, range(0, len(images), batch_size)))

    def cat(k, which):
        return jnp.concatenate([pt[which][k] for pt in parts]) if len(parts) > 1 else parts[0][which][k]
    return ({p: cat("/".join(p), 0) for p in outputs}, {p: cat("/".join(p), 1) for p in inputs})


def _same(x: jax.Array, ref: jax.Array) -> bool:
    """Whether a pruned input equals the dense one up to float rounding (1e-6 relative)."""
    return float(jnp.max(jnp.abs(x - ref))) <= 1e-6 * max(float(jnp.max(jnp.abs(ref))), 1e-30)


def refit_sequential(model: nn.Module, dense_variables, variables, layers: Sequence[LayerInfo],
                     removed: Mapping[Path, np.ndarray], images: np.ndarray, *, sweeps: int = 1,
                     damp: float = 1e-3, batch_size: int = 256, min_rows: float = 0.0,
                     skipped: list | None = None) -> dict:
    """The sequential refit (module doc) of ``layers``.

    Args:
      model: the Flax model; ``dense_variables`` its dense variables; ``variables`` the
        full-size compensated variables (removed input rows zero in every consumer).
      layers: conv/dense layers to refit (any order; they are refit in call order).
      removed: layer path -> the kernel-matrix rows [k] its pruning removed (absent or
        empty: none). A layer with no removed row whose pruned input equals the dense one
        (1e-6 relative) is left alone: its dense weights are already optimal.
      images: [N, H, W, C] calibration images, all in one pruned pass.
      sweeps: passes; damp: relative ridge; batch_size: images per dense forward and per
        Gram reduction (calibration's, so that its compiled Gram executables are reused).
      min_rows: a layer whose input gives fewer than ``min_rows`` rows per kept input
        (bias included) is not refit (module doc; 0: every layer is refit).
      skipped: if given, the names of the layers ``min_rows`` left alone are appended
        (first sweep).
    Returns:
      A copy of ``variables`` with every refit layer's kernel (and bias) replaced.
    """
    layers = sorted(layers, key=lambda i: i.order)
    for info in layers:
        if info.kind not in ("conv", "dense"):
            raise ValueError(f"layer {info.name}: the refit needs channel-mixing conv/dense layers, "
                             f"not {info.kind}")
    targets = {i.path: i for i in layers}
    rem = {p: np.asarray(removed.get(p, np.zeros(0, np.int64)), np.int64).reshape(-1) for p in targets}
    unpruned = [p for p in targets if not len(rem[p])]
    dense_out, dense_in = _dense_pass(model, dense_variables, images, list(targets), unpruned, batch_size)
    out = copy_tree(variables)
    x = jnp.asarray(images, jnp.float32)
    for sweep in range(int(sweeps)):
        left: list = []
        _one_pass(model, dense_variables, out, targets, rem, dense_out, dense_in, x, damp, batch_size,
                  float(min_rows), left)
        if skipped is not None and sweep == 0:
            skipped.extend(left)
    return out


def starved(info: LayerInfo, rows: int, n_removed: int, min_rows: float) -> bool:
    """Whether ``rows`` input rows are too few to refit layer ``info`` with ``n_removed``
    of its kernel-matrix rows removed: fewer than ``min_rows`` per kept input (the bias
    counts as an input)."""
    return rows < float(min_rows) * (info.d_in + int(info.use_bias) - int(n_removed))


def _one_pass(model, dense_variables, out, targets, rem, dense_out, dense_in, x, damp, batch_size,
              min_rows=0.0, skipped=None) -> None:
    """One eager forward of the pruned network (``out``, updated in place) refitting every
    target layer at its first call."""
    done: set = set()
    bypass: list = []

    def call_with(mod, args, kwargs):
        params = {"kernel": _leaf(out, ("params",) + tuple(mod.path) + ("kernel",))}
        if targets[tuple(mod.path)].use_bias:
            params["bias"] = _leaf(out, ("params",) + tuple(mod.path) + ("bias",))
        bypass.append(True)
        try:
            return mod.clone(parent=None).apply({"params": params}, *args, **kwargs)
        finally:
            bypass.pop()

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        p = tuple(mod.path)
        if bypass or context.method_name != "__call__" or not isinstance(mod, LAYER_TYPES) or p not in targets:
            return next_fun(*args, **kwargs)
        if p in done:  # a later call of a layer already refit in this pass
            return call_with(mod, args, kwargs)
        done.add(p)
        info = targets[p]
        if not len(rem[p]) and _same(args[0], dense_in[p]):
            return next_fun(*args, **kwargs)
        st = cross_stats(info, args[0], dense_out[p], batch_size=batch_size)
        if min_rows > 0 and starved(info, st.count, len(rem[p]), min_rows):
            if skipped is not None:
                skipped.append(info.name)
            return call_with(mod, args, kwargs)  # its compensated weights, as they are
        new = solve_refit(st, rem[p], damp)
        dt = np.asarray(_leaf(dense_variables, ("params",) + p + ("kernel",))).dtype
        set_leaf(out, ("params",) + p + ("kernel",), new[:info.d_in].reshape(info.kernel_shape).astype(dt))
        if info.use_bias:  # DenseGeneral biases have the features' shape (ViT q/k/v: [heads, dim])
            shape = np.shape(_leaf(dense_variables, ("params",) + p + ("bias",)))
            set_leaf(out, ("params",) + p + ("bias",), new[info.d_in].reshape(shape).astype(dt))
        return call_with(mod, args, kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(out, x, train=False)
