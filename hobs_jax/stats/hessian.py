"""Layer-wise Hessians of the reconstruction loss, streamed over calibration data.

For a linear layer ``Y = X W`` (X: [n, d] input rows, see :mod:`hobs_jax.stats.layers`)
the layer-wise loss ``||X W - X W'||_F^2 / n`` has Hessian ``H = (2/n) X^T X`` in every
output column (Hassibi & Stork, "Optimal Brain Surgeon", NIPS 1993; OBC, Frantar &
Alistarh, NeurIPS 2022). :func:`collect_hessians` runs the network once over the
calibration images and accumulates, for every requested layer, ``X^T X`` (and the
column sums ``X^T 1`` when the layer has a bias), per batch: one jitted
forward returns the inputs of the requested layers (intercepted with
``flax.linen.intercept_methods``), then one jitted reduction per layer
(:func:`layer_gram`) runs on each. The reductions are compiled once per layer *shape*:
the 58 conv/dense layers of a ResNet-56 have 9 shapes, so 9 compile, not 58 inlined into
one step. That is what makes the faster but costlier-to-compile 2-D shift Gram pay: on
the 2-core CPU, H-OBS's calibration of the Fashion-MNIST ResNet-56 (2048 images) went
from 25.8 to 18.3 s wall on the first call and from 15.6 to 11.5 s once compiled
(``benchmarks/hobs_cost.py``). Memory is bounded by one batch's inputs of the collected
layers per worker thread (two on CPU, :mod:`hobs_jax.stats.streams`) plus the ``d x d``
sums, whatever the number of images.

Depthwise convs mix no channels: their statistics are per channel, ``[C, k*k, k*k]``.

Accumulation is float32 by default; ``dtype='float64'`` runs the Gram products and the
cross-batch sums in float64 (``jax.enable_x64`` around the calibration pass only; the
network itself still runs in its own dtype).

:func:`dampen` prepares a Hessian for inversion as SparseGPT does (Frantar & Alistarh,
"SparseGPT", ICML 2023): inputs that are always zero on the calibration data ("dead":
zero diagonal) get diagonal 1 (their weights then neither matter nor move), and
``damp * mean(diag H)`` is added to the diagonal.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import faults, interrupt
from hobs_jax.stats.gram import (
    gram_conv,
    gram_conv_rowshift,
    gram_conv_shift2d,
    gram_conv_sliced,
    gram_depthwise,
    gram_rows,
    row_shiftable,
    shift2d_able,
)
from hobs_jax.stats.layers import (
    LayerInfo,
    conv_output_hw,
    conv_patches,
    dense_rows,
    intercepting,
    shape_key,
    sliceable,
    trace_layers,
)
from hobs_jax.stats.streams import ordered_map, resolve_workers

log = logging.getLogger(__name__)

DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Accumulated input statistics of one layer.

    Attributes:
      info: the layer (:class:`~hobs_jax.stats.layers.LayerInfo`).
      xtx: [d, d] sum of x x^T over all input rows (depthwise: [C, k*k, k*k]).
      xsum: [d] sum of the rows (None unless the layer has a bias).
      count: number of rows n (examples x output positions).
    """

    info: LayerInfo
    xtx: np.ndarray
    xsum: np.ndarray | None
    count: int

    def hessian(self, *, bias: bool = False) -> np.ndarray:
        """H = (2/n) X^T X, float64. With ``bias`` (layers with a bias only) the input
        gets a constant-1 column appended: H = (2/n) [[X^T X, X^T 1], [1^T X, n]]."""
        h = self.xtx.astype(np.float64) * (2.0 / self.count)
        if not bias:
            return h
        if self.xsum is None:
            raise ValueError(f"layer {self.info.name}: no bias statistics were collected")
        s = self.xsum.astype(np.float64) * (2.0 / self.count)
        d = h.shape[0]
        out = np.empty((d + 1, d + 1))
        out[:d, :d], out[:d, d], out[d, :d], out[d, d] = h, s, s, 2.0
        return out


@dataclasses.dataclass(frozen=True)
class HessianStats:
    """Statistics of every collected layer (keyed by module path) over ``num_examples``
    calibration examples, accumulated in ``dtype``."""

    layers: Mapping[tuple[str, ...], LayerStats]
    num_examples: int
    dtype: str

    def __getitem__(self, path) -> LayerStats:
        return self.layers[tuple(path)]

    def __contains__(self, path) -> bool:
        return tuple(path) in self.layers


def dampen(h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(H with dead inputs' diagonal set to 1 and ``damp * mean(diag)`` added, dead mask).

    Args:
      h: [d, d] Hessian (float64).
      damp: relative dampening lambda (SparseGPT's ``percdamp``), >= 0.
    """
    if not damp >= 0:
        raise ValueError(f"damp={damp!r}: dampening must be >= 0")
    h = np.array(h, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    idx = np.flatnonzero(dead)
    h[idx, idx] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    return h, dead


def _key(path: tuple[str, ...]) -> str:
    return "/".join(path)


def layer_gram(info: LayerInfo, x: jax.Array) -> tuple[jax.Array, jax.Array | None, int]:
    """(X^T X [d, d], X^T 1 [d] or None, rows per example) of one batch of layer input
    ``x`` (conv: [N, H, W, C]); depthwise layers give [C, kk, kk] and [C, kk]. 2-D shift
    Gram for stride-1 convs, row-shift Gram for row-stride-1 convs, strided slices for
    other convs (:mod:`hobs_jax.stats.gram`)."""
    if info.kind == "dense":
        rows = dense_rows(info, x)
        return gram_rows(rows), (rows.sum(0) if info.use_bias else None), int(rows.shape[0] // x.shape[0])
    if shift2d_able(info) or row_shiftable(info) or sliceable(info):
        fn = (gram_conv_shift2d if shift2d_able(info)
              else gram_conv_rowshift if row_shiftable(info) else gram_conv_sliced)
        g, s = fn(info, x)
        ho, wo = conv_output_hw(info, x.shape[1:3])
        return g, s, ho * wo
    p = conv_patches(info, x)  # [n, C, kk]
    rpe = int(p.shape[0] // x.shape[0])
    if info.kind == "depthwise":
        return gram_depthwise(p), (p.sum(0) if info.use_bias else None), rpe
    s = jnp.swapaxes(p.sum(0), 0, 1).reshape(-1) if info.use_bias else None
    return gram_conv(p), s, rpe


#: Traces of :func:`_layer_sums` since :func:`reset_compile_count` (jit traces once per new
#: static key and input shape, and each trace is one compile; jax.jit has no public count).
_TRACES = [0]


def compiled_reductions() -> int:
    """How many per-layer-shape Gram reductions were traced (= compiled) since
    :func:`reset_compile_count`: each layer *shape* compiles once, whatever the number of
    layers; tests check it."""
    return _TRACES[0]


def reset_compile_count() -> None:
    """Start :func:`compiled_reductions` from 0 (with ``jax.clear_caches()``, the next
    calls compile again and are counted)."""
    _TRACES[0] = 0


def clear_compiled() -> None:
    """Forget the traced calibration forwards, so the next calibration traces again (a
    test that changes module-level tuning such as ``gram.CHUNK_ELEMENTS`` needs it)."""
    _forward.cache_clear()


@functools.lru_cache(maxsize=8)
def _forward(model: nn.Module, paths: tuple[tuple[str, ...], ...]):
    """jit(variables, x) -> {layer key: [its input at each call]} of the layers ``paths``
    (eval mode), cached per model and layer set so repeated calibrations compile once."""
    want = set(paths)

    def fwd(variables, x):
        ins: dict[str, list] = {}

        def on_layer(mod, xin, y):
            if tuple(mod.path) in want:
                ins.setdefault(_key(tuple(mod.path)), []).append(xin)

        with nn.intercept_methods(intercepting(on_layer)):
            model.apply(variables, x, train=False)
        return ins
    return jax.jit(fwd)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _layer_sums(info: LayerInfo, dtype_name: str, inputs: tuple, w: jax.Array):
    """({'xtx': X^T X, 'xsum': X^T 1 (bias layers)}, all finite) of one layer over its
    inputs of one batch (one per call of the layer), batch rows weighted by ``w`` [N]
    (0 masks the last batch's padding). Jitted per layer *shape* (``info`` is a
    :func:`~hobs_jax.stats.layers.shape_key`): the layers of one ResNet stage share one
    executable, so compilation does not grow with depth."""
    _TRACES[0] += 1  # runs while tracing only: once per compiled executable
    dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    g = s = None
    for xin in inputs:
        mask = w.reshape((-1,) + (1,) * (xin.ndim - 1)).astype(dtype)
        gi, si, _ = layer_gram(info, xin.astype(dtype) * mask)
        g = gi if g is None else g + gi
        if si is not None:
            s = si if s is None else s + si
    assert g is not None  # a layer is called at least once
    out = {"xtx": g}
    ok = jnp.all(jnp.isfinite(g))
    if s is not None:
        out["xsum"] = s
        ok = ok & jnp.all(jnp.isfinite(s))
    return out, ok


def batched_gram(info: LayerInfo, x: jax.Array, batch_size: int,
                 dtype_name: str = "float32") -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    """(X^T X, X^T 1 or None, all finite, rows) of one layer's input ``x`` ([N, ...]),
    reduced ``min(batch_size, N)`` images at a time by the executables calibration
    compiled (:func:`_layer_sums`, same static key and batch shape: no new compile when
    ``batch_size`` is calibration's); the last batch is zero-padded and masked, and the
    batches' sums are added on the host in float64. Used by the refit
    (:mod:`hobs_jax.stats.cross`) for the pruned network's input Gram."""
    n = int(x.shape[0])
    bs = max(1, min(int(batch_size), n))
    key = shape_key(info)
    parts = []
    for i in range(0, n, bs):
        xi = x[i:i + bs] if n > bs else x
        w = np.ones(bs, np.float32)
        if xi.shape[0] < bs:
            w[xi.shape[0]:] = 0.0
            xi = jnp.concatenate([xi, jnp.zeros((bs - xi.shape[0],) + tuple(xi.shape[1:]), xi.dtype)])
        parts.append(_layer_sums(key, dtype_name, (xi,), jnp.asarray(w)))
    parts = jax.device_get(parts)
    g = functools.reduce(np.add, (np.asarray(sums["xtx"], np.float64) for sums, _ in parts))
    s = (functools.reduce(np.add, (np.asarray(sums["xsum"], np.float64) for sums, _ in parts))
         if "xsum" in parts[0][0] else None)
    return g, s, all(bool(fin) for _, fin in parts), n * _rows_per_example(key, x.shape)


def _rows_per_example(info: LayerInfo, in_shape: Sequence[int]) -> int:
    """Rows X gets per example from one call on input ``in_shape`` ([N, ...])."""
    if info.kind == "dense":
        return int(np.prod(in_shape[1:])) // int(info.d_in)
    ho, wo = conv_output_hw(info, tuple(in_shape[1:3]))
    return int(ho * wo)


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(acc, batch):
    """acc + batch, leaf by leaf (the running sums are donated)."""
    return jax.tree.map(jnp.add, acc, batch)


def check_images(images, input_shape: Sequence[int] | None, what: str = "calibration images") -> np.ndarray:
    """One-line ``ValueError`` unless ``images`` is a finite float [N>=1, H, W, C] array of
    ``input_shape[1:]``."""
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"{what} must be [N, H, W, C], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what} must be floating point (preprocessed), got dtype {a.dtype}")
    if a.shape[0] < 1:
        raise ValueError(f"{what}: need at least one image, got shape {a.shape}")
    if input_shape is not None and tuple(a.shape[1:]) != tuple(input_shape[1:]):
        raise ValueError(f"{what} have shape {a.shape[1:]} per image, the model expects "
                         f"{tuple(input_shape[1:])}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a).reshape(len(a), -1).all(1))[0])
        raise ValueError(f"{what}: image {bad} has NaN/Inf values")
    return a


def collect_hessians(model: nn.Module, variables: Mapping, images: np.ndarray, *,
                     paths: Sequence[Sequence[str]] | None = None, batch_size: int = 256,
                     dtype: str = "float32", progress: bool = True,
                     infos: Mapping[tuple[str, ...], LayerInfo] | None = None,
                     workers: int | None = None) -> HessianStats:
    """Stream ``images`` through ``model`` (eval mode) and accumulate every layer's input
    statistics (see module docstring).

    Args:
      model, variables: a Flax model (zoo calling contract) and its variables.
      images: [N, H, W, C] float calibration images (preprocessed).
      paths: module paths of the layers to collect; default every Conv/Dense/
        DenseGeneral except grouped (non-depthwise) convs.
      batch_size: images per jitted step; the last batch is padded and its padding rows
        masked out, so one executable serves every batch.
      dtype: 'float32' or 'float64' accumulation.
      progress: tqdm bar (``hobs_jax.train.progress``).
      infos: the :func:`~hobs_jax.stats.layers.trace_layers` result if already traced.
      workers: host threads running batches concurrently (None: 2 on CPU, 1 elsewhere;
        :mod:`hobs_jax.stats.streams`); the sums are taken in batch order, so the result
        does not depend on it.
    Returns:
      :class:`HessianStats`. Raises a one-line ``ValueError`` for malformed images, an
      unknown layer path, or non-finite activations (naming the layer and batch).
    """
    from hobs_jax.train import progress as bar

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {DTYPES}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    workers = resolve_workers(workers)
    images = check_images(images, None)
    all_infos = dict(infos) if infos is not None else trace_layers(model, variables, (1,) + images.shape[1:])
    if paths is None:
        want = {p: i for p, i in all_infos.items() if i.kind != "grouped"}
    else:
        want = {}
        for p in paths:
            p = tuple(p)
            if p not in all_infos:
                raise ValueError(f"no Conv/Dense layer at {'/'.join(p)!r}; layers: "
                                 f"{', '.join(_key(q) for q in list(all_infos)[:6])}...")
            if all_infos[p].kind == "grouped":
                raise ValueError(f"layer {'/'.join(p)} is a grouped conv: no Hessian statistics")
            want[p] = all_infos[p]
    n = len(images)
    bs = min(int(batch_size), n)
    x64 = dtype == "float64"
    fwd = _forward(model, tuple(want))
    keys = {_key(p): shape_key(info) for p, info in want.items()}
    rpe: dict[str, int] = {}

    def one_batch(i):
        """(per-layer sums of batch i, per-layer finite flags), computed on a worker: one
        jitted forward returns the layers' inputs, then one jitted reduction per layer."""
        x = images[i * bs:(i + 1) * bs]
        w = np.ones(bs, np.float32)
        if len(x) < bs:  # pad the last batch, mask its padding rows out
            w[len(x):] = 0.0
            x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
        with jax.enable_x64(x64):  # thread-local: set on the worker too
            ins = fwd(variables, jnp.asarray(x, jnp.float32))
            w = jnp.asarray(w)
            sums, finite = {}, {}
            for k, xs in ins.items():
                rpe[k] = sum(_rows_per_example(keys[k], xi.shape) for xi in xs)
                sums[k], finite[k] = _layer_sums(keys[k], dtype, tuple(xs), w)
            del ins
            return jax.block_until_ready((sums, finite))

    with jax.enable_x64(x64):
        order = {_key(p): info.order for p, info in want.items()}  # report the first bad layer
        nb = -(-n // bs)
        acc = None
        batches = ordered_map(one_batch, range(nb), workers)
        for i, (sums, finite) in enumerate(bar(batches, total=nb, desc="hessians", unit="batch", enabled=progress)):
            bad = sorted((k for k, ok in finite.items() if not bool(ok)), key=lambda k: order[k])
            if bad:
                raise ValueError(f"calibration batch {i}: the input of layer {bad[0]} has NaN/Inf "
                                 f"values (activations overflow or the weights are not finite)")
            acc = sums if acc is None else _accumulate(acc, sums)  # batch order: as a sequential loop
            faults.point("hessians.batch", i)
            interrupt.check(f"while collecting calibration statistics (batch {i + 1} of {nb})")
        host = jax.device_get(acc)
    npdt = np.float64 if dtype == "float64" else np.float32
    layers = {}
    for p, info in want.items():
        a = host[_key(p)]
        layers[p] = LayerStats(info, np.asarray(a["xtx"], npdt),
                               np.asarray(a["xsum"], npdt) if "xsum" in a else None,
                               int(n * rpe[_key(p)]))
    return HessianStats(layers, n, dtype)
