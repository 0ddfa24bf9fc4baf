"""Flax NNX modules: traced, pruned and handed back as ordinary NNX modules.

An NNX module is a mutable Python object holding its arrays (``nnx.Param``,
``nnx.BatchStat``). The pruning machinery works on pure functions of variables
(``apply(variables, x, train=...)``: the jaxpr graph, the Hessian statistics, BN
re-estimation, the cost models), so an NNX module is run through :class:`NNXModel`, a
linen module that

* holds the NNX module's *static* part (its ``nnx.GraphDef``) and, for every Flax layer
  in it (``nnx.Conv``, ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.BatchNorm``,
  ``nnx.LayerNorm``, ``nnx.Embed``; ``nnx.MultiHeadAttention`` is made of those), the
  equivalent linen layer at the same path, so ``variables["params"]`` has exactly the
  NNX state's tree (list indices as strings: ``blocks/0/conv/kernel``);
* on every call merges the graph definition with the variables into a fresh NNX object
  (``nnx.merge``), puts each layer's linen twin in its place, sets ``deterministic`` /
  ``use_running_average`` from ``train`` (what ``model.train()`` / ``model.eval()`` do)
  and runs the user's own ``__call__``.

The layers therefore run as linen layers: the Hessian statistics, the refit and BN
re-estimation (which intercept linen layers and update ``batch_stats``) work on NNX
modules unchanged, and the results are numerically those of the NNX layers (same
``lax`` calls; tested equal). Parameters the user's code creates itself (a layer scale
``nnx.Param``) are linen parameters of the same path.

**Surgery** (:func:`rebuild`) is the NNX way: a fresh copy of the module
(``nnx.merge``), every array replaced by its slice, and each layer's width attributes
(``in_features``, ``out_features``, ``kernel_shape``, ``num_features``, ``num_heads``,
``head_dim``, ``qkv_features``, ...) set from the new shapes. The result is an ordinary
``nnx.Module`` at the new widths: ``nnx.Optimizer(pruned, optax.sgd(...), wrt=nnx.Param)``
trains it (tested). Attributes the user's own modules keep (``self.dim = 64`` read in
``__call__``) cannot be known to be widths; a group whose width they fix is found by the
probe of :func:`hobs_jax.graph.prunable.graph_of` and listed as not prunable.

Refused in one line: a variable shared by two layers (tied weights) or by a layer and
another module, and variable types other than ``nnx.Param`` / ``nnx.BatchStat`` /
RNG state.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_COLLECTIONS = ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats"))
_CALL = threading.local()  # id(NNX object) -> path of the last traced copy (error messages)


def _layer_kind(mod) -> str | None:
    """The linen twin's kind for NNX layer ``mod``, or None (run as NNX code)."""
    if isinstance(mod, nnx.Conv) and getattr(mod, "mask", None) is None:
        return "conv"
    if isinstance(mod, nnx.Linear):
        return "dense"
    if isinstance(mod, nnx.LinearGeneral) and not len(mod.batch_axis):
        return "dense_general"
    if isinstance(mod, nnx.BatchNorm):
        return "batch_norm"
    if isinstance(mod, nnx.LayerNorm):
        return "layer_norm"
    if isinstance(mod, nnx.Embed):
        return "embed"
    if isinstance(mod, nnx.Dropout):
        return "dropout"
    return None


def _dtype(d):
    return None if d is None else jnp.dtype(d).name


def _twin_fields(kind: str, mod) -> tuple:
    """Constructor fields of the linen twin of NNX layer ``mod`` (hashable)."""
    if kind == "conv":
        f = dict(features=int(mod.out_features), kernel_size=tuple(mod.kernel_size), strides=mod.strides,
                 padding=mod.padding, input_dilation=mod.input_dilation, kernel_dilation=mod.kernel_dilation,
                 feature_group_count=int(mod.feature_group_count), use_bias=bool(mod.use_bias),
                 precision=mod.precision)
    elif kind == "dense":
        f = dict(features=int(mod.out_features), use_bias=bool(mod.use_bias), precision=mod.precision)
    elif kind == "dense_general":
        f = dict(features=tuple(int(s) for s in mod.out_features), axis=tuple(mod.axis),
                 use_bias=bool(mod.use_bias), precision=mod.precision)
    elif kind == "batch_norm":
        f = dict(axis=mod.axis, momentum=float(mod.momentum), epsilon=float(mod.epsilon),
                 use_bias=bool(mod.use_bias), use_scale=bool(mod.use_scale), axis_name=mod.axis_name,
                 use_fast_variance=bool(mod.use_fast_variance))
    elif kind == "layer_norm":
        f = dict(epsilon=float(mod.epsilon), use_bias=bool(mod.use_bias), use_scale=bool(mod.use_scale),
                 reduction_axes=mod.reduction_axes, feature_axes=mod.feature_axes,
                 use_fast_variance=bool(mod.use_fast_variance))
    elif kind == "embed":
        f = dict(num_embeddings=int(mod.num_embeddings), features=int(mod.features))
    else:  # dropout
        f = dict(rate=float(mod.rate), broadcast_dims=tuple(mod.broadcast_dims))
    if kind != "dropout":
        f["dtype"], f["param_dtype"] = _dtype(getattr(mod, "dtype", None)), _dtype(mod.param_dtype)

    def freeze(v):
        if isinstance(v, list):
            return tuple(freeze(a) for a in v)
        return v
    return tuple(sorted((k, freeze(v)) for k, v in f.items()))


_LINEN = {"conv": nn.Conv, "dense": nn.Dense, "dense_general": nn.DenseGeneral, "batch_norm": nn.BatchNorm,
          "layer_norm": nn.LayerNorm, "embed": nn.Embed}


def _children(obj) -> list[tuple[Any, Any]]:
    """(key, child) of an NNX module or container: items of lists and dicts (``nnx.List``,
    ``nnx.Dict`` included), public attributes of other modules."""
    if isinstance(obj, (list, tuple, nnx.List)):
        return list(enumerate(obj))
    if isinstance(obj, (dict, nnx.Dict)):
        return list(obj.items())
    if isinstance(obj, nnx.Module):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    return []


def _walk(obj, path=(), seen=None, out=None):
    """Every (path, parent, key, child) reference below ``obj`` (a shared object is
    listed at each reference, descended into once)."""
    if seen is None:
        seen, out = set(), []
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    for key, child in _children(obj):
        if isinstance(child, (nnx.Module, nnx.Variable, list, tuple, dict)):
            out.append((path + (key,), obj, key, child))
            if not isinstance(child, nnx.Variable):
                _walk(child, path + (key,), seen, out)
    return out


def _set(parent, key, value) -> None:
    if isinstance(parent, (list, dict, nnx.List, nnx.Dict)):
        parent[key] = value
    else:
        setattr(parent, key, value)


def _spath(path) -> tuple[str, ...]:
    return tuple(str(k) for k in path)


class _Node(nn.Module):
    """A scope of the NNX tree: its children are linen layers, sub-nodes and the raw
    variables the user's modules hold. ``spec`` entries: ``(name, "node", spec)``,
    ``(name, "layer", kind, fields)``, ``(name, "var", collection, shape, dtype)``."""

    spec: tuple

    def setup(self):
        for entry in self.spec:
            name, what = entry[0], entry[1]
            if what == "node":
                setattr(self, name, _Node(entry[2]))
            elif what == "layer":
                setattr(self, name, _LINEN[entry[2]](**dict(entry[3])))
            else:
                col, shape, dtype = entry[2], entry[3], entry[4]
                init = (lambda *_, s=shape, d=dtype: jnp.zeros(s, d))
                if col == "params":
                    setattr(self, name, self.param(name, init))
                else:
                    setattr(self, name, self.variable(col, name, init).value)

    def child(self, path: Sequence[str]):
        node = self
        for k in path:
            node = getattr(node, k)
        return node


class _Proxy(nnx.Module):
    """Stands in an NNX object for one of its layers: calls the linen twin."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class NNXModel(_Node):
    """An NNX module as a linen module: ``apply(variables, x, train=False)`` (module doc).

    Attributes:
      graphdef: the NNX module's graph definition (its static part; hashable).
      template: ``(path, variable type, collection | None)`` of every NNX variable,
        in the order of its flat state.
      layers: ``(first path, kind)`` of every layer run by a linen twin.
      refs: ``(path, first path)`` of every reference to such a layer (a module held
        twice is one layer called twice).
      kwargs: fixed keyword arguments of the NNX module's ``__call__``.
    """

    graphdef: Any = None
    template: tuple = ()
    layers: tuple = ()
    refs: tuple = ()
    kwargs: tuple = ()
    NAME_STACK_ROOTS: ClassVar[int] = 1  # the layers sit at their own paths below this class

    def __call__(self, x, train: bool = False):
        from flax.nnx import statelib

        owned = {p for p, kind in self.layers}
        values = []
        for path, vtype, col in self.template:
            if col is not None and path[:-1] in owned:
                val = jnp.zeros(())  # the linen twin holds it; the NNX copy never reads it
            elif col is not None:
                val = self.child(_spath(path))
            elif issubclass(vtype, nnx.RngKey):
                val = jax.random.key(0)
            else:
                val = jnp.zeros((), jnp.uint32)
            values.append((path, vtype(val)))
        model = nnx.merge(self.graphdef, statelib.State.from_flat_path(values))
        model.set_attributes(deterministic=not train, use_running_average=not train, raise_if_not_found=False)
        paths = {id(model): ()}
        for path, parent, key, child in _walk(model):
            paths.setdefault(id(child), path)
        _CALL.paths = {i: "/".join(_spath(p)) for i, p in paths.items()}
        kinds = dict(self.layers)
        for path, first in self.refs:
            parent = model
            for k in path[:-1]:
                parent = parent[k] if isinstance(parent, (list, tuple, dict, nnx.List, nnx.Dict)) else getattr(parent, k)
            _set(parent, path[-1], _Proxy(self._twin(kinds[first], self.child(_spath(first)), train)))
        return model(x, **dict(self.kwargs))

    def _twin(self, kind: str, layer, train: bool):
        if kind == "batch_norm":
            def bn(x, use_running_average=None, *, mask=None):
                ura = (not train) if use_running_average is None else use_running_average
                return layer(x, use_running_average=ura, mask=mask)
            return bn
        if kind == "dropout":
            def dropout(x, deterministic=None, rngs=None):
                off = (not train) if deterministic is None else deterministic
                if off or layer.rate == 0.0 or not self.has_rng("dropout"):
                    return x
                return layer(x, deterministic=False)
            return dropout

        def plain(x, *args, **kwargs):  # NNX's optional arguments (out_sharding, mask) left at None
            extra = [k for k, v in kwargs.items() if v is not None]
            if args or extra:
                raise ValueError(f"NNX {kind} layer called with {extra or 'extra positional arguments'}: "
                                 f"not supported by the pruning adapter")
            return layer(x)
        return plain


def failing_layer(exc: BaseException) -> str | None:
    """The path of the innermost NNX module or bound linen layer running when ``exc``
    was raised (read off the traceback), for one-line error messages."""
    tb, found = exc.__traceback__, None
    paths = getattr(_CALL, "paths", {})
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and obj.scope is not None and not isinstance(obj, (NNXModel, _Node)):
            found = "/".join(obj.path) or type(obj).__name__
        elif isinstance(obj, nnx.Module) and not isinstance(obj, _Proxy) and id(obj) in paths:
            found = paths[id(obj)] or type(obj).__name__
        tb = tb.tb_next
    return found


def split_variables(module) -> tuple[dict, list]:
    """``({"params": ..., "batch_stats": ...}, flat state)`` of NNX ``module`` (string keys);
    refuses other variable types in one line."""
    _, state = nnx.split(module)
    flat = list(nnx.to_flat_state(state))
    variables: dict = {}
    for path, var in flat:
        col = next((c for t, c in _COLLECTIONS if isinstance(var, t)), None)
        if col is None:
            if isinstance(var, (nnx.RngKey, nnx.RngCount)):
                continue
            raise ValueError(f"NNX variable {'/'.join(_spath(path))} is a {type(var).__name__}: only nnx.Param, "
                             f"nnx.BatchStat and RNG state are supported")
        node = variables.setdefault(col, {})
        for k in _spath(path)[:-1]:
            node = node.setdefault(k, {})
        node[str(path[-1])] = var.get_value() if hasattr(var, "get_value") else var.value
    return variables, flat


def _check_tied(module) -> None:
    """One-line error when a variable is shared by two layers, or by a layer and another
    module (tied weights: their groups could not be cut independently)."""
    owner: dict[int, str] = {}
    for path, parent, key, child in _walk(module):
        if not isinstance(child, nnx.Variable) or isinstance(child, (nnx.RngKey, nnx.RngCount)):
            continue
        where = "/".join(_spath(path))
        parent_path = "/".join(_spath(path[:-1]))
        if id(child) in owner and owner[id(child)].rsplit("/", 1)[0] != parent_path:
            raise ValueError(f"NNX variables {owner[id(child)]} and {where} are one shared array (tied weights); "
                             f"pruning needs each layer's variables to be its own")
        owner.setdefault(id(child), where)


def adapter(module, call_kwargs: Mapping[str, Any] | None = None) -> NNXModel:
    """The :class:`NNXModel` running NNX ``module`` (module docstring)."""
    _check_tied(module)
    graphdef, _ = nnx.split(module)
    variables, flat = split_variables(module)
    first: dict[int, tuple] = {}
    layers, refs = [], []
    for path, parent, key, child in _walk(module):
        if isinstance(child, nnx.Module):
            kind = _layer_kind(child)
            if kind is None:
                continue
            if id(child) not in first:
                first[id(child)] = path
                layers.append((path, kind, child))
            refs.append((path, first[id(child)]))
    owned = {p for p, _, _ in layers}
    template = []
    tree: dict = {}

    def put(path, entry):
        node = tree
        for k in _spath(path)[:-1]:
            node = node.setdefault(k, {})
        node[str(path[-1])] = entry

    for path, kind, child in layers:
        if kind != "dropout":
            put(path, ("layer", kind, _twin_fields(kind, child)))
    for path, var in flat:
        col = next((c for t, c in _COLLECTIONS if isinstance(var, t)), None)
        template.append((tuple(path), type(var), col))
        if col is not None and tuple(path[:-1]) not in owned:
            value = var.get_value() if hasattr(var, "get_value") else var.value
            put(path, ("var", col, tuple(np.shape(value)), jnp.dtype(value.dtype).name))

    def spec(node) -> tuple:
        out = []
        for name, entry in node.items():
            if isinstance(entry, dict):
                out.append((name, "node", spec(entry)))
            elif entry[0] == "layer":
                out.append((name, "layer", entry[1], entry[2]))
            else:
                out.append((name, "var") + tuple(entry[1:]))
        return tuple(out)

    return NNXModel(spec=spec(tree), graphdef=graphdef, template=tuple(template),
                    layers=tuple((p, k) for p, k, _ in layers), refs=tuple(refs),
                    kwargs=tuple(sorted(dict(call_kwargs or {}).items())))


def _fix_widths(module) -> None:
    """Set each Flax layer's width attributes of ``module`` from its arrays' shapes."""
    mhas = []
    for path, parent, key, mod in _walk(module):
        if not isinstance(mod, nnx.Module):
            continue
        if isinstance(mod, nnx.Conv):
            k = mod.kernel.get_value().shape
            g = int(mod.feature_group_count)
            if g > 1 and k[-2] == 1:  # depthwise (x multiplier): a group per input channel
                g = int(k[-1]) // max(int(mod.out_features) // g, 1)
                mod.feature_group_count = g
            mod.in_features, mod.out_features = int(k[-2]) * g, int(k[-1])
            mod.kernel_shape = tuple(int(s) for s in k)
        elif isinstance(mod, nnx.Linear):
            k = mod.kernel.get_value().shape
            mod.in_features, mod.out_features = int(k[0]), int(k[1])
        elif isinstance(mod, nnx.LinearGeneral):
            k = mod.kernel.get_value().shape
            nb, ni = len(mod.batch_axis), len(mod.in_features)
            mod.in_features = tuple(int(s) for s in k[nb:nb + ni])
            mod.out_features = tuple(int(s) for s in k[nb + ni:])
        elif isinstance(mod, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
            arr = next((v for v in (getattr(mod, "scale", None), getattr(mod, "bias", None),
                                    getattr(mod, "mean", None)) if isinstance(v, nnx.Variable)), None)
            if arr is not None:
                mod.num_features = int(arr.get_value().shape[-1])
        elif isinstance(mod, nnx.Embed):
            e = mod.embedding.get_value().shape
            mod.num_embeddings, mod.features = int(e[0]), int(e[-1])
        elif isinstance(mod, nnx.MultiHeadAttention):
            mhas.append(mod)
    for mod in mhas:  # after their projections
        h, d = mod.query.out_features
        mod.num_heads, mod.head_dim, mod.qkv_features = int(h), int(d), int(h) * int(d)
        mod.in_features = int(mod.query.in_features[0])
        mod.in_kv_features = int(mod.key.in_features[0])
        mod.num_kv_heads = int(mod.key.out_features[0])
        mod.out_features = int(mod.out.out_features[0])


def with_arrays(module, variables: Mapping):
    """A new NNX module like ``module`` holding ``variables`` (any widths: arrays replaced,
    layer attributes set from the new shapes); ``module`` itself is not touched."""
    from flax.nnx import statelib

    graphdef, state = nnx.split(module)
    by_path = {c: {tuple(str(getattr(k, "key", k)) for k in p): leaf
                   for p, leaf in jax.tree_util.tree_flatten_with_path(variables.get(c, {}))[0]}
               for _, c in _COLLECTIONS}
    flat = []
    for path, var in nnx.to_flat_state(state):
        col = next((c for t, c in _COLLECTIONS if isinstance(var, t)), None)
        if col is None:
            flat.append((path, var.replace(var.get_value())))
            continue
        key = _spath(path)
        if key not in by_path[col]:
            raise ValueError(f"variables lack {col}/{'/'.join(key)} of the NNX module")
        flat.append((path, var.replace(by_path[col][key])))
    copy = nnx.merge(graphdef, statelib.State.from_flat_path(flat))
    _fix_widths(copy)
    return copy


def to_nnx(prunable):
    """The NNX module of ``prunable`` holding its variables."""
    return with_arrays(prunable.source, prunable.variables)
