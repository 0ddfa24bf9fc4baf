"""A user's linen module, rebuilt at the widths of its variables without width fields.

Torch-Pruning users patch ``num_heads`` and ``in_features`` by hand after pruning; a
linen module written with hard-coded widths (``nn.Conv(64, (3, 3))``, ``nn.Dense(4 * d)``,
``nn.MultiHeadDotProductAttention(num_heads=12)``) has no field to patch at all. Here the
module's own ``__call__`` runs unchanged and every Flax layer takes its width from the
variables it is handed: :class:`LinenModel` runs the user's module under a Flax method
interceptor (:func:`flax.linen.intercept_methods`, public API) that, when a layer is
about to run, reads the shape of that layer's own kernel from its scope and, if the
layer was constructed for another width, runs a clone of the layer (``module.clone``
with the width fields set from the kernel, bound to the same scope, so the same
variables) instead. A pruned network is therefore a real smaller network: the layers
compute at the sliced widths and no mask or padding exists anywhere.

Layers and the fields taken from their variables:

====================================  =============================================
``nn.Conv``, ``nn.ConvTranspose``,    ``features`` = kernel's last axis; a depthwise conv
``nn.ConvLocal``, ``nn.Dense``        (kernel in-axis 1) gets one group per input channel
``nn.DenseGeneral``                   ``features`` = kernel's trailing feature axes
``nn.Embed``                          ``num_embeddings``, ``features``
``nn.Einsum``                         ``shape`` = the kernel's shape
``nn.MultiHeadDotProductAttention``   ``num_heads``, ``qkv_features`` from the query
(and ``SelfAttention``)               kernel [D, heads, head_dim]; ``out_features``
                                      from the output kernel when it was set
norms (BatchNorm, LayerNorm, ...)     nothing: they read the width of their input
====================================  =============================================

Why intercept calls rather than construction: linen creates a layer inside its parent's
``__call__`` (``nn.Conv(64, ...)(x)``) and offers no hook at construction; the method
interceptor is the one public place where a layer can be swapped before it runs, and it
sees the layer bound to its scope, hence its variables. The price: another interceptor
entered *around* the call (the Hessian statistics of :mod:`hobs_jax.stats.layers`) sees
the layer as constructed before it sees the clone. That matters only when the input of
a method that traces layers is itself a rebuilt module (pruning a pruned network again):
:func:`hobs_jax.graph.prunable` then refuses with a one-line error; prune the original
module at the combined target, or compose the plans (``graph.compose``).

What the rebuild cannot follow is found before any plan is made (the probe of
:func:`hobs_jax.graph.prunable.graph_of`): a width the module computes from a field
(``x.reshape(b, s, self.heads, 64)``), a parameter created with a hard-coded shape
(``self.param("gamma", init, (64,))``), a slice at a fixed index. Its group is listed as
not prunable, with the layer and the error, and a plan pruning it is refused in one line.
The query/key head dim of Flax's attention is fixed by :func:`fixed_axes`: its size sets
the softmax scale ``1/sqrt(head_dim)``, so pruning it would change the function rather
than remove channels.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import numpy as np

_TRAIN_ARGS = {"train": True, "training": True, "is_training": True, "deterministic": False,
               "use_running_average": False}


class Ref:
    """Holds a module by identity: hashable and comparable even when the module's own
    fields (lists, arrays) are not, so adapters can be cache keys."""

    __slots__ = ("module",)

    def __init__(self, module: Any):
        self.module = module

    def __hash__(self) -> int:
        return id(self.module)

    def __eq__(self, other) -> bool:
        return isinstance(other, Ref) and other.module is self.module

    def __repr__(self) -> str:
        return f"Ref({type(self.module).__name__})"


def call_convention(module: nn.Module) -> tuple[tuple[str, bool], ...]:
    """How the library's ``train`` flag reaches ``module.__call__``: the keyword arguments
    it takes among train / training / is_training (= train) and deterministic /
    use_running_average (= not train), as ``((name, same_sign), ...)``."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return ()
    return tuple((n, _TRAIN_ARGS[n]) for n in params if n in _TRAIN_ARGS)


def _kernel(mod: nn.Module, name: str = "kernel"):
    if mod.scope is None or not mod.has_variable("params", name):
        return None
    return mod.get_variable("params", name)


def width_updates(mod: nn.Module, x=None) -> dict:
    """The width fields of Flax layer ``mod`` that differ from what its variables hold
    (see module docstring); empty for other modules or when nothing differs. ``x``: the
    layer's input, for a depthwise conv's group count (one group per input channel)."""
    upd: dict = {}
    if isinstance(mod, nn.MultiHeadDotProductAttention):
        params = mod.variables.get("params", {}) if mod.scope is not None else {}
        q = params.get("query", {}).get("kernel")
        o = params.get("out", {}).get("kernel")
        if q is not None:
            h, d = int(q.shape[-2]), int(q.shape[-1])
            upd["num_heads"] = h
            # qkv_features None means "the input's width": only set it when that differs.
            if mod.qkv_features is not None or x is None or int(np.shape(x)[-1]) != h * d:
                upd["qkv_features"] = h * d
        if o is not None and mod.out_features is not None:
            upd["out_features"] = int(o.shape[-1])
    elif isinstance(mod, (nn.Conv, nn.ConvTranspose, nn.ConvLocal, nn.Dense)):
        k = _kernel(mod)
        if k is not None:
            upd["features"] = int(k.shape[-1])
            groups = getattr(mod, "feature_group_count", 1)
            if groups > 1 and k.shape[-2] == 1 and x is not None and np.ndim(x) >= 2:
                upd["feature_group_count"] = int(np.shape(x)[-1])  # depthwise: a group per channel
    elif isinstance(mod, nn.DenseGeneral):
        k = _kernel(mod)
        if k is not None:
            if isinstance(mod.features, int):
                upd["features"] = int(k.shape[-1])
            else:
                n = len(tuple(mod.features))
                upd["features"] = tuple(int(s) for s in k.shape[len(k.shape) - n:])
    elif isinstance(mod, nn.Embed):
        e = _kernel(mod, "embedding")
        if e is not None:
            upd["num_embeddings"], upd["features"] = int(e.shape[0]), int(e.shape[-1])
    elif isinstance(mod, nn.Einsum):
        k = _kernel(mod)
        if k is not None:
            upd["shape"] = tuple(int(s) for s in k.shape)
    return {k: v for k, v in upd.items() if getattr(mod, k) != v}


def follow_widths(next_fun, args, kwargs, context):
    """Method interceptor: run a Flax layer at the width of its variables (module doc)."""
    mod = context.module
    if context.method_name == "__call__" and mod.scope is not None:
        upd = width_updates(mod, args[0] if args else None)
        if upd:
            return mod.clone(parent=mod.scope, **upd)(*args, **kwargs)
    return next_fun(*args, **kwargs)


class LinenModel(nn.Module):
    """A user's linen module under the library's calling convention,
    ``apply(variables, x, train=False)``, running at the widths of its variables.

    The user's module is bound to this adapter's own scope, so its variables keep their
    paths (``params/Conv_0/kernel``, not ``params/inner/Conv_0/kernel``).

    Attributes:
      inner: the user's (unbound) module, held by identity.
      call: how ``train`` reaches its ``__call__`` (:func:`call_convention`).
      kwargs: further fixed keyword arguments of its ``__call__``.
    """

    inner: Ref
    call: tuple = ()
    kwargs: tuple = ()
    # Name-stack components before the first layer: this class's and the user module's.
    NAME_STACK_ROOTS: ClassVar[int] = 2

    @property
    def module(self) -> nn.Module:
        """The user's module."""
        return self.inner.module

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(self.kwargs)
        for name, same in self.call:
            kw[name] = bool(train) if same else not train
        inner = self.inner.module.clone(parent=self.scope)
        with nn.intercept_methods(follow_widths):
            return inner(x, **kw)


def wrap(module: nn.Module, call_kwargs: Mapping[str, Any] | None = None) -> LinenModel:
    """``module`` as a :class:`LinenModel` (an adapter is returned as it is)."""
    if isinstance(module, LinenModel):
        return module
    kwargs = dict(call_kwargs or {})
    call = tuple((n, s) for n, s in call_convention(module) if n not in kwargs)
    return LinenModel(Ref(module), call, tuple(sorted(kwargs.items())))


def fixed_axes(attention_paths: Sequence[tuple[str, ...]]) -> tuple:
    """``(collection, leaf path, axis, reason)`` of the query/key head dim of every Flax
    attention layer at ``attention_paths`` (see module docstring)."""
    out = []
    for p in attention_paths:
        why = (f"the query/key head dim of attention {'/'.join(p)} sets its softmax scale "
               f"1/sqrt(head_dim): pruning it would change the function")
        for proj in ("query", "key"):
            out.append(("params", tuple(p) + (proj, "kernel"), 2, why))
    return tuple(out)


def attention_layers(model: nn.Module, variables: Mapping, x) -> list[tuple[str, ...]]:
    """Paths of the Flax attention layers ``model.apply(variables, x)`` calls (abstract
    trace)."""
    import jax

    found: list[tuple[str, ...]] = []

    def spy(next_fun, args, kwargs, context):
        mod = context.module
        if (context.method_name == "__call__" and isinstance(mod, nn.MultiHeadDotProductAttention)
                and tuple(mod.path) not in found):
            found.append(tuple(mod.path))
        return next_fun(*args, **kwargs)

    def run(v, x):
        with nn.intercept_methods(spy):
            return model.apply(v, x, train=False)

    jax.eval_shape(run, variables, x)
    return found
