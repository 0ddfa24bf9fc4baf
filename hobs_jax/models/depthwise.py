"""A fast depthwise convolution for XLA:CPU, swapped in at run time without changing a model.

Why
---
XLA:CPU lowers a depthwise convolution (``lax.conv_general_dilated`` with
``feature_group_count`` = channels, the kxk layer of MobileNetV2's inverted residuals
(Sandler et al., CVPR 2018) and EfficientNet's MBConv blocks (Tan & Le, ICML 2019)) to a
pathologically slow loop. Measured on our shared 2-core CPU ([32, 28, 28, 96] NHWC, 3x3,
stride 1, jitted; ``benchmarks/depthwise_layer.py``, docs/results/depthwise_layer.md):
76.9 ms forward with the grouped conv, 5.2 ms as the sum of 9 shifted slices times the
per-channel kernel (15x); forward and backward 298 vs 61 ms (4.9x). (A probe, not kept,
found NCHW and ``vmap`` over channels as slow as the grouped conv.) A depthwise conv is nothing but that sum: with
x padded once,

    y[b, p, q, c] = sum_{i < kh, j < kw} x_pad[b, p*s_h + i*d_h, q*s_w + j*d_w, c] * K[i, j, 0, c]

so :func:`shift_add_depthwise` writes it as kh*kw strided ``lax.slice``s, multiplies and
adds, which XLA fuses into one loop over the output (its gradient: slices transpose to
pads, again fused).

Why an interceptor and not a different layer
--------------------------------------------
The graph tracer, the MACs counter, H-OBS statistics and the torch parity converters all
read depthwise layers as ``conv_general_dilated`` with ``feature_group_count`` from the
models' jaxprs, and the zoo's parameter layout is torchvision's. So the models stay as
they are and :func:`fast_depthwise` wraps an *apply function* instead: it runs it under
:func:`flax.linen.intercept_methods` (public API, the mechanism of
:mod:`hobs_jax.graph.linen_model`) and computes each eligible ``nn.Conv`` call from that
layer's own ``kernel`` (and ``bias``) variables with :func:`shift_add_depthwise`. Only the
engines that run a model for training and evaluation use it (``hobs_jax.train``, the
``train.fast_depthwise`` option); a jaxpr traced anywhere else is unchanged.

Eligible calls: an ``nn.Conv`` (subclasses included, such as the zoo's
:class:`hobs_jax.models.sparse.Conv` when it runs as a plain dense conv: its Block-ELL path
never reaches ``nn.Conv.__call__``) whose ``feature_group_count``, input channels and
``features`` are equal (channel multiplier 1; kernel [kh, kw, 1, C]), a 2-D kernel of at
most 7x7, an input [B, H, W, C], any strides and kernel dilation, input dilation 1,
padding given as explicit pairs, an int, or 'SAME' / 'VALID', shared weights, no weight
mask and no custom ``conv_general_dilated``. Every other call, and the call that creates
the variables (``init``), runs the layer unchanged, so a model without depthwise convs
compiles to the same program.

Composition with other interceptors: Flax runs the interceptors of the outermost
``intercept_methods`` context first and the innermost last, right before the layer's own
method. The fast path must take the place of that method only, so its interceptor
computes a call only when it is the last in the call's chain (``next_fun`` is
``context.orig_method``); when another interceptor was entered inside the wrapped
function (a masked or gated forward, the width follower of
:class:`hobs_jax.graph.LinenModel`, AST's head-norm recorder), it re-enters itself
innermost for the calls the intercepted method makes. Every other interceptor, entered
inside or outside, therefore sees each depthwise call with its input and output (a
width follower's clone included) exactly as without the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

MODES = ("auto", "on", "off")
MAX_KERNEL = 7  # larger windows: kh*kw slices stop paying for themselves (and none is in the zoo)

__all__ = ["MODES", "MAX_KERNEL", "shift_add_depthwise", "fast_depthwise", "resolve_mode",
           "maybe_fast_depthwise", "eligible"]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name}={v!r} must be a positive int or a pair of them")
    return t[0], t[1]


def _pads(padding: Any, spatial: tuple[int, int], window: tuple[int, int],
          strides: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Explicit ((lo, hi), (lo, hi)) for ``padding`` (pairs, an int, 'SAME', 'VALID'),
    None for anything else (CIRCULAR, REFLECT, CAUSAL, ...)."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None
        pads = lax.padtype_to_pads(spatial, window, strides, padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding, Sequence) and len(padding) == 2:
        out = []
        for p in padding:
            if isinstance(p, int):
                out.append((p, p))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(a, int) for a in p):
                out.append((int(p[0]), int(p[1])))
            else:
                return None
        return tuple(out)  # type: ignore[return-value]
    return None


def shift_add_depthwise(x: Array, kernel: Array, strides: int | Sequence[int] = 1,
                        padding: Any = "SAME", dilation: int | Sequence[int] = 1) -> Array:
    """Depthwise 2-D convolution as a sum of shifted slices (module docstring).

    Equal to ``lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=C)`` up to the order
    of the kh*kw additions (float64: about 1e-15 relative), forward and gradients.

    Args:
      x: [B, H, W, C] (NHWC).
      kernel: [kh, kw, 1, C] (HWIO, channel multiplier 1).
      strides: int or (s_h, s_w).
      padding: 'SAME' | 'VALID' | int | ((lo_h, hi_h), (lo_w, hi_w)) (negative crops, as
        in lax).
      dilation: kernel (rhs) dilation, int or (d_h, d_w).
    Returns:
      [B, H_out, W_out, C], H_out = (H + lo_h + hi_h - d_h*(kh - 1) - 1) // s_h + 1.
    Raises:
      ValueError: shapes that are not a depthwise conv, a padding it cannot read, or an
        empty output.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"x {tuple(x.shape)} must be [B, H, W, C] and kernel "
                         f"{tuple(kernel.shape)} [kh, kw, 1, C]")
    b, h, w, c = x.shape
    kh, kw, one, kc = kernel.shape
    if one != 1 or kc != c:
        raise ValueError(f"kernel {tuple(kernel.shape)} must be [kh, kw, 1, {c}] for x "
                         f"{tuple(x.shape)} (depthwise, channel multiplier 1)")
    sh, sw = _pair(strides, "strides")
    dh, dw = _pair(dilation, "dilation")
    win = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    pads = _pads(padding, (h, w), win, (sh, sw))
    if pads is None:
        raise ValueError(f"padding={padding!r}: use 'SAME', 'VALID', an int or "
                         f"((lo, hi), (lo, hi))")
    (ph0, ph1), (pw0, pw1) = pads
    ho = (h + ph0 + ph1 - win[0]) // sh + 1
    wo = (w + pw0 + pw1 - win[1]) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"x {tuple(x.shape)} with padding {pads} is smaller than the "
                         f"dilated window {win}: empty output")
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (ph0, ph1, 0), (pw0, pw1, 0), (0, 0, 0)))
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    out: Array | None = None
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            tap = lax.slice(xp, (0, r0, c0, 0), (b, r0 + (ho - 1) * sh + 1, c0 + (wo - 1) * sw + 1, c),
                            (1, sh, sw, 1))
            term = tap.astype(dtype) * kernel[i, j, 0].astype(dtype)
            out = term if out is None else out + term
    assert out is not None  # kh, kw >= 1
    return out


def eligible(mod: nn.Module, x: Any) -> bool:
    """Whether the call ``mod(x)`` is a depthwise conv :func:`fast_depthwise` computes
    (the list in the module docstring); False for anything else."""
    if not isinstance(mod, nn.Conv) or mod.scope is None:
        return False
    if getattr(x, "ndim", None) != 4:
        return False
    # an int kernel_size is a 1-D conv in Flax (as is any other rank but 2): not ours
    ks = (mod.kernel_size,) if isinstance(mod.kernel_size, int) else tuple(mod.kernel_size)
    c = int(x.shape[-1])
    if not (len(ks) == 2 and max(ks) <= MAX_KERNEL and mod.feature_group_count == c == mod.features
            and c > 1):
        return False
    if (not mod.shared_weights or mod.mask is not None or mod.conv_general_dilated is not None
            or mod.conv_general_dilated_cls is not None):
        return False
    try:
        strides = _pair(1 if mod.strides is None else mod.strides, "strides")
        dil = _pair(1 if mod.kernel_dilation is None else mod.kernel_dilation, "kernel_dilation")
        if _pair(1 if mod.input_dilation is None else mod.input_dilation, "input_dilation") != (1, 1):
            return False
    except (ValueError, TypeError):
        return False
    win = ((ks[0] - 1) * dil[0] + 1, (ks[1] - 1) * dil[1] + 1)
    pads = _pads(mod.padding, (int(x.shape[1]), int(x.shape[2])), win, strides)
    if pads is None:
        return False
    if any((n + lo + hi - k) // s + 1 < 1 for n, (lo, hi), k, s in
           zip(x.shape[1:3], pads, win, strides)):
        return False
    if not mod.has_variable("params", "kernel"):  # init: let the layer create its variables
        return False
    if tuple(mod.get_variable("params", "kernel").shape) != (ks[0], ks[1], 1, c):
        return False
    return not mod.use_bias or mod.has_variable("params", "bias")


def _compute(mod: nn.Conv, x: Array) -> Array:
    """``mod(x)`` for an :func:`eligible` call, from the layer's own variables."""
    kernel: Array = mod.get_variable("params", "kernel")
    bias: Array | None = mod.get_variable("params", "bias") if mod.use_bias else None
    xp, kp, bias = mod.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    assert xp is not None and kp is not None  # promote_dtype keeps non-None inputs
    y = shift_add_depthwise(xp, kp, 1 if mod.strides is None else mod.strides, mod.padding,
                            1 if mod.kernel_dilation is None else mod.kernel_dilation)
    if bias is not None:
        y = y + bias.reshape((1, 1, 1, -1))
    return y


def fast_depthwise(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``apply_fn`` (a ``model.apply``) with its depthwise convs computed by
    :func:`shift_add_depthwise` (module docstring: which calls, and how it composes).

    Same signature and results as ``apply_fn`` (up to floating-point rounding of the
    kh*kw-term sum); parameters, mutable collections and RNG use are unchanged.
    """

    def apply(*args, **kwargs):
        ours: list = []  # our interceptors on Flax's stack, the innermost last

        def make():
            def interceptor(next_fun, a, kw, context):
                # Last in the chain: nothing but the layer's own method comes after us.
                last = next_fun is context.orig_method
                if (last and context.method_name == "__call__" and len(a) == 1 and not kw
                        and eligible(context.module, a[0])):
                    return _compute(context.module, a[0])
                if last or ours[-1] is not interceptor:
                    return next_fun(*a, **kw)
                # Interceptors entered after ours run after us: re-enter ours innermost for
                # the calls this method makes, so that they see those calls first.
                inner = make()
                ours.append(inner)
                try:
                    with nn.intercept_methods(inner):
                        return next_fun(*a, **kw)
                finally:
                    ours.pop()

            return interceptor

        ours.append(make())
        with nn.intercept_methods(ours[0]):
            return apply_fn(*args, **kwargs)

    apply.__wrapped__ = apply_fn  # type: ignore[attr-defined]
    return apply


def resolve_mode(mode: str) -> bool:
    """'on' -> True, 'off' -> False, 'auto' -> whether JAX's default backend is the CPU
    (the slow lowering is XLA:CPU's; GPU and TPU convolutions are left to their libraries).
    Raises a one-line ValueError for another value."""
    if mode not in MODES:
        raise ValueError(f"fast_depthwise={mode!r}: unknown; use one of {MODES}")
    if mode == "auto":
        return jax.default_backend() == "cpu"
    return mode == "on"


def maybe_fast_depthwise(apply_fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """:func:`fast_depthwise` ``(apply_fn)`` when :func:`resolve_mode` ``(mode)``, else
    ``apply_fn`` itself."""
    return fast_depthwise(apply_fn) if resolve_mode(mode) else apply_fn
