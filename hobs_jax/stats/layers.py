"""Which layers a network calls, and how a layer's input becomes rows of a matrix X.

Second-order pruning works on each linear layer's *input rows*: a layer computes
``Y = X W`` with ``W`` its kernel reshaped to ``[d_in, d_out]`` and ``X`` ``[n, d_in]``
one row per output position. The row order of ``X`` must match the kernel's reshape:

* ``nn.Dense``: kernel ``[C_in, C_out]``; X = the input with all leading axes flattened.
* ``nn.DenseGeneral``: kernel ``[*in_dims, *features]`` (ViT's q/k/v ``[D, heads, dim]``,
  ``out`` ``[heads, v_dim, D]``); X = the input's contracted axes, row-major, leading
  axes flattened.
* ``nn.Conv`` (``feature_group_count == 1``): kernel HWIO ``[kh, kw, C_in, C_out]``
  reshaped to ``[kh*kw*C_in, C_out]``, so a row of X is the im2col patch ordered
  (tap row, tap column, channel) with the channel fastest. (``lax.conv_general_dilated_patches``
  orders its features channel-major; :func:`conv_rows` transposes them.)
* depthwise conv (``feature_group_count == C_in``, kernel ``[kh, kw, 1, C]``): channel c
  sees only its own k*k patch; X is ``[n, C, kh*kw]`` (per-channel rows).

:func:`trace_layers` discovers every such layer with one abstract trace
(``jax.eval_shape``: nothing is computed), with the BatchNorm that directly normalizes
its output, if any (used to weigh reconstruction errors in post-BN units).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LAYER_TYPES = (nn.Conv, nn.Dense, nn.DenseGeneral)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """Static facts of one linear layer of a traced network.

    Attributes:
      path: module path (its kernel is ``params/<path>/kernel``).
      kind: 'conv' | 'depthwise' | 'grouped' | 'dense' ('dense' covers Dense and
        DenseGeneral; 'grouped' convs with 1 < groups < C_in get no statistics).
      kernel_shape: the kernel's shape.
      in_axes: kernel axes contracted with the input, row-major order of X's columns
        (conv (0, 1, 2); Dense (0,); ViT ``out`` (0, 1)).
      out_axes: the kernel's output axes.
      strides, padding, lhs_dilation, rhs_dilation, groups: convolution parameters
        (explicit ``((lo, hi), (lo, hi))`` padding); empty for dense layers.
      use_bias: whether the layer adds a bias (its input then has a constant-1 column).
      input_axes: for dense layers, the input axes contracted (negative indices).
      bn: path of the BatchNorm applied directly to this layer's output, or None;
        ``bn_eps`` its epsilon.
      order: call order in the forward pass (0 = first layer called).
    """

    path: tuple[str, ...]
    kind: str
    kernel_shape: tuple[int, ...]
    in_axes: tuple[int, ...]
    out_axes: tuple[int, ...]
    strides: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()
    lhs_dilation: tuple[int, ...] = ()
    rhs_dilation: tuple[int, ...] = ()
    groups: int = 1
    use_bias: bool = False
    input_axes: tuple[int, ...] = ()
    bn: tuple[str, ...] | None = None
    bn_eps: float = 0.0
    order: int = 0

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def d_in(self) -> int:
        """Columns of X: k*k*C_in for convs, k*k for depthwise (per channel)."""
        if self.kind == "depthwise":
            return int(np.prod(self.kernel_shape[:2]))
        return int(np.prod([self.kernel_shape[a] for a in self.in_axes]))

    @property
    def d_out(self) -> int:
        return int(np.prod([self.kernel_shape[a] for a in self.out_axes]))


def _tuple(v, n: int, default: int = 1) -> tuple[int, ...]:
    if v is None:
        return (default,) * n
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(a) for a in v)


def _conv_padding(module: nn.Conv, in_spatial: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], rhs_dil: Sequence[int]) -> tuple[tuple[int, int], ...]:
    pad = module.padding
    n = len(kernel)
    if isinstance(pad, str):
        if pad.upper() not in ("SAME", "VALID"):
            raise ValueError(f"conv {'/'.join(module.path)}: padding {pad!r} is not supported for "
                             f"Hessian statistics (use explicit, 'SAME' or 'VALID')")
        window = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dil)]
        return tuple((int(p[0]), int(p[1])) for p in
                     jax.lax.padtype_to_pads(tuple(in_spatial), window, tuple(strides), pad.upper()))
    if isinstance(pad, int):
        return ((pad, pad),) * n
    out = []
    for p in pad:
        out.append((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])))
    return tuple(out)


def describe(module: nn.Module, x: Array, order: int) -> LayerInfo:
    """The :class:`LayerInfo` of ``module`` (Conv/Dense/DenseGeneral) called on ``x``."""
    path = tuple(module.path)
    name = "/".join(path)
    if isinstance(module, nn.Conv):
        if x.ndim != 4:
            raise ValueError(f"conv {name}: Hessian statistics need NHWC inputs, got shape {tuple(x.shape)}")
        ks = _tuple(module.kernel_size, 2)
        cin = int(x.shape[-1])
        g = int(module.feature_group_count)
        strides = _tuple(module.strides, 2)
        lhs = _tuple(module.input_dilation, 2)
        rhs = _tuple(module.kernel_dilation, 2)
        pad = _conv_padding(module, x.shape[1:3], ks, strides, rhs)
        kshape = ks + (cin // g, int(module.features))
        kind = "conv" if g == 1 else ("depthwise" if g == cin and cin // g == 1 else "grouped")
        return LayerInfo(path, kind, kshape, (0, 1, 2), (3,), strides, pad, lhs, rhs, g,
                         bool(module.use_bias), order=order)
    if isinstance(module, nn.DenseGeneral):
        if getattr(module, "batch_dims", ()):
            raise ValueError(f"DenseGeneral {name}: batch_dims are not supported for Hessian statistics")
        axes = _tuple(module.axis, 1) if isinstance(module.axis, int) else tuple(module.axis)
        axes = tuple(a % x.ndim - x.ndim for a in axes)
        feats = _tuple(module.features, 1) if isinstance(module.features, int) else tuple(module.features)
        in_dims = tuple(int(x.shape[a]) for a in axes)
        kshape = in_dims + tuple(int(f) for f in feats)
        k = len(in_dims)
        return LayerInfo(path, "dense", kshape, tuple(range(k)), tuple(range(k, len(kshape))),
                         use_bias=bool(module.use_bias), input_axes=axes, order=order)
    if isinstance(module, nn.Dense):
        kshape = (int(x.shape[-1]), int(module.features))
        return LayerInfo(path, "dense", kshape, (0,), (1,), use_bias=bool(module.use_bias),
                         input_axes=(-1,), order=order)
    raise TypeError(f"{type(module).__name__} is not a Conv/Dense/DenseGeneral")


def intercepting(on_layer: Callable[[nn.Module, Array, Array], None],
                 on_bn: Callable[[nn.Module, Array], None] | None = None):
    """An ``nn.intercept_methods`` interceptor calling ``on_layer(module, x, y)`` after
    every Conv/Dense/DenseGeneral ``__call__`` and ``on_bn(module, x)`` before every
    BatchNorm ``__call__``."""
    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if on_bn is not None and isinstance(mod, nn.BatchNorm):
            on_bn(mod, args[0])
            return next_fun(*args, **kwargs)
        if isinstance(mod, LAYER_TYPES):
            y = next_fun(*args, **kwargs)
            on_layer(mod, args[0], y)
            return y
        return next_fun(*args, **kwargs)
    return interceptor


def trace_layers(model: nn.Module, variables: Mapping, input_shape: Sequence[int]) -> dict[tuple[str, ...], LayerInfo]:
    """Every Conv/Dense/DenseGeneral layer ``model.apply(variables, x, train=False)`` calls,
    keyed by module path, in call order (abstract trace; nothing is computed).

    A layer called more than once must see inputs of one shape each time (its statistics
    are summed over calls)."""
    infos: dict[tuple[str, ...], LayerInfo] = {}
    produced: dict[int, tuple[str, ...]] = {}

    def on_layer(mod, x, y):
        info = describe(mod, x, len(infos))
        prev = infos.get(info.path)
        if prev is not None and dataclasses.replace(prev, order=0) != dataclasses.replace(info, order=0):
            raise ValueError(f"layer {info.name} is called with inputs of different shapes")
        if prev is None:
            infos[info.path] = info
        produced[id(y)] = info.path

    def on_bn(mod, x):
        src = produced.get(id(x))
        if src is not None:
            infos[src] = dataclasses.replace(infos[src], bn=tuple(mod.path), bn_eps=float(mod.epsilon))

    shape = (1,) + tuple(input_shape[1:])

    def fwd(v):
        with nn.intercept_methods(intercepting(on_layer, on_bn)):
            return model.apply(v, jnp.zeros(shape, jnp.float32), train=False)

    jax.eval_shape(fwd, variables)
    return infos


def conv_patches(info: LayerInfo, x: Array) -> Array:
    """[n, C_in, kh*kw] im2col patches, channel-major as ``lax.conv_general_dilated_patches``
    produces them (with the layer's stride, padding and dilations)."""
    kh, kw = info.kernel_shape[:2]
    p = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), info.strides, info.padding, lhs_dilation=info.lhs_dilation,
        rhs_dilation=info.rhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    return p.reshape(-1, int(x.shape[-1]), kh * kw)


def sliceable(info: LayerInfo) -> bool:
    """Whether :func:`conv_slices` builds this layer's rows (channel-mixing convs without
    input dilation)."""
    return info.kind == "conv" and tuple(info.lhs_dilation or (1, 1)) == (1, 1)


def shape_key(info: LayerInfo) -> LayerInfo:
    """``info`` without what does not change a statistics computation (path, call order,
    BN): layers of one shape share one compiled function (the 3x3 convs of a ResNet stage
    compile once)."""
    return dataclasses.replace(info, path=(), bn=None, bn_eps=0.0, order=0)


def conv_output_hw(info: LayerInfo, hw) -> tuple[int, int]:
    """Output height and width of conv ``info`` on an input of spatial size ``hw``."""
    (kh, kw), (sh, sw), (dh, dw) = info.kernel_shape[:2], info.strides, info.rhs_dilation
    lh, lw = info.lhs_dilation or (1, 1)
    h = (int(hw[0]) - 1) * lh + 1 + sum(info.padding[0])
    w = (int(hw[1]) - 1) * lw + 1 + sum(info.padding[1])
    return (h - ((kh - 1) * dh + 1)) // sh + 1, (w - ((kw - 1) * dw + 1)) // sw + 1


def conv_slices(info: LayerInfo, x: Array) -> Array:
    """[N, Ho, Wo, kh*kw*C_in] im2col rows of a conv, already in the HWIO order (tap row, tap
    col, channel): the zero-padded input read at each tap by a strided slice and the kh*kw
    slices concatenated on the channel axis. Same values as :func:`conv_patches` (a grouped
    convolution with a one-hot kernel, then a transpose), at a fraction of the memory
    traffic: on this 2-core CPU it made ResNet-56's Hessian accumulation ~2x faster."""
    if not sliceable(info):
        raise ValueError(f"layer {info.name}: {info.kind} layers with input dilation "
                         f"{info.lhs_dilation} have no sliced rows")
    kh, kw = info.kernel_shape[:2]
    (pt, pb), (pl, pr) = info.padding
    sh, sw = info.strides
    dh, dw = info.rhs_dilation
    xp = jnp.pad(x, ((0, 0), (max(pt, 0), max(pb, 0)), (max(pl, 0), max(pr, 0)), (0, 0)))
    xp = xp[:, max(-pt, 0): xp.shape[1] - max(-pb, 0), max(-pl, 0): xp.shape[2] - max(-pr, 0)]
    ho, wo = conv_output_hw(info, x.shape[1:3])
    taps = [xp[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def conv_rows(info: LayerInfo, x: Array) -> Array:
    """X of a conv layer: [n, kh*kw*C_in] rows ordered (tap row, tap col, channel), the
    row order of the HWIO kernel reshaped to [kh*kw*C_in, C_out]; depthwise layers give
    [n, C, kh*kw] (per-channel patches).

    Channel-mixing convs without input dilation take :func:`conv_slices`; the others
    (input-dilated, depthwise) the channel-major patches of :func:`conv_patches`.
    """
    if sliceable(info):
        return conv_slices(info, x).reshape(-1, info.d_in)
    p = conv_patches(info, x)
    if info.kind == "depthwise":
        return p
    return jnp.swapaxes(p, 1, 2).reshape(p.shape[0], -1)


def dense_rows(info: LayerInfo, x: Array) -> Array:
    """X of a Dense/DenseGeneral layer: [n, d_in] (contracted axes row-major, the rest
    flattened into rows)."""
    nd = x.ndim
    axes = [a % nd for a in info.input_axes]
    rest = [a for a in range(nd) if a not in axes]
    xt = jnp.transpose(x, rest + axes)
    return xt.reshape(-1, info.d_in)


def layer_rows(info: LayerInfo, x: Array) -> Array:
    """X of any supported layer (see module docstring)."""
    if info.kind in ("conv", "depthwise"):
        return conv_rows(info, x)
    if info.kind == "dense":
        return dense_rows(info, x)
    raise ValueError(f"layer {info.name}: {info.kind} layers have no row matrix")


def kernel_matrix(info: LayerInfo, kernel: np.ndarray) -> np.ndarray:
    """The kernel as [d_in, d_out] in X's row order (depthwise: [C, kh*kw])."""
    k = np.asarray(kernel)
    if info.kind == "depthwise":
        return k.reshape(-1, k.shape[-1]).T
    return k.reshape(info.d_in, info.d_out)


def capture_inputs(model: nn.Module, variables: Mapping, x: Array,
                   paths: Sequence[tuple[str, ...]] | None = None) -> dict[tuple[str, ...], Array]:
    """The input of every Conv/Dense/DenseGeneral layer (or of ``paths``) on batch ``x``
    (eval mode). For tests and analysis on small batches: this *holds* activations; the
    Hessian statistics stream instead (:mod:`hobs_jax.stats.hessian`)."""
    want = None if paths is None else {tuple(p) for p in paths}
    out: dict[tuple[str, ...], Array] = {}

    def on_layer(mod, xin, y):
        p = tuple(mod.path)
        if want is None or p in want:
            out.setdefault(p, xin)

    with nn.intercept_methods(intercepting(on_layer)):
        model.apply(variables, x, train=False)
    return out


def capture_outputs(model: nn.Module, variables: Mapping, x: Array) -> tuple[Array, dict[tuple[str, ...], Array]]:
    """(logits, {layer path: layer output}) on batch ``x`` in eval mode."""
    out: dict[tuple[str, ...], Array] = {}

    def on_layer(mod, xin, y):
        out.setdefault(tuple(mod.path), y)

    with nn.intercept_methods(intercepting(on_layer)):
        logits = model.apply(variables, x, train=False)
    return cast(Array, logits), out  # apply without mutable collections returns the output only

