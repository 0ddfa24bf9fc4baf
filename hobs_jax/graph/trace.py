"""Trace a Flax model to a jaxpr and derive its channel groups (no per-architecture lists).

``model.apply(variables, x, train=False)`` is traced with abstract values (shapes only,
nothing is computed), so the variables are jaxpr inputs and every variable axis gets a
channel space. The equations are walked in order, recursing into ``jit``,
``custom_jvp_call``, ``custom_vjp_call`` and ``checkpoint`` sub-jaxprs; each primitive's
rule (:mod:`hobs_jax.graph.rules`) unites the spaces it identifies. The network input's
axes and the outputs' axes are *pinned* (so are the input channels, the logits, and
everything tied to them). What remains, per class of atomic spaces, is a group.

A group is listed when it holds at least one variable axis, is produced by some
equation (an activation channel, not just a parameter), and is not a spatial axis.
Ids follow the first equation that produces the group (topological order), then the
axis and part position, so they are deterministic.

Reference: DepGraph (Fang et al., CVPR 2023) builds the same kind of grouping from a
PyTorch autograd graph with per-layer-type handlers; here it falls out of per-primitive
rules on the jaxpr, which also covers attention einsums and reshapes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from hobs_jax.graph.groups import (Atom, Composite, Graph, Group, Layout, OpCost, VarAxis, layout_groups,
                                   members_by_group)
from hobs_jax.graph.rules import RULES, RuleContext, unsupported
from hobs_jax.graph.spaces import SpaceTable

CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr",
         "remat2": "jaxpr"}
_SKIP_STACK = ("jit(", "pjit(", "jvp(", "transpose(", "vmap(", "checkpoint", "remat")


def _path(prefix: str, eqn) -> str:
    stack = str(eqn.source_info.name_stack)
    parts = [p for p in f"{prefix}/{stack}".split("/") if p and not p.startswith(_SKIP_STACK)]
    return "/".join(parts)


def _strip_root(path: str, roots: int = 1) -> str:
    # Flax puts the top module's class name first ("ResNet/layer1/0/conv1"); the adapter
    # of hobs_jax.graph.linen_model adds its own (``roots`` 2). Code of the user's top
    # module itself is named by its class ("Spectral"), not left empty.
    parts = path.split("/")
    rest = parts[roots:]
    if not rest and roots > 1 and len(parts) >= roots:
        return parts[roots - 1]
    return "/".join(rest)


def _shape_of(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


class _Tracer:
    def __init__(self, roots: int = 1) -> None:
        self.table = SpaceTable()
        self.ctx = RuleContext(self.table)
        self.counter = 0
        self.first_use: dict[Any, int] = {}
        self.roots = roots
        # Counted ops: (layer path, kind, constant factor, spaces whose sizes multiply).
        self.ops: list[tuple[str, str, int, tuple]] = []

    def record(self, where: str, eqn, ins: Sequence[tuple], outs: Sequence[tuple]) -> None:
        """Remember a convolution's / dot product's MACs as sizes of its axes' spaces (the
        convention of :mod:`hobs_jax.macs`: output elements x contracted size)."""
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            dn = eqn.params["dimension_numbers"]
            rshape = _shape_of(eqn.invars[1])
            const = math.prod(rshape[d] for d in dn.rhs_spec[2:])
            self.ops.append((where, "conv", const, tuple(outs[0]) + (ins[1][dn.rhs_spec[1]],)))
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            self.ops.append((where, "dot", 1, tuple(outs[0]) + tuple(ins[0][i] for i in lc)))

    def axes_of(self, aval, kind: str | None = None, text: str | None = None) -> tuple:
        return tuple(self.ctx.fresh(n, kind, text) for n in getattr(aval, "shape", ()))

    def walk(self, jaxpr, ins: Sequence[tuple], act: Sequence[bool], consts: Sequence[tuple],
             prefix: str) -> tuple[list[tuple], list[bool]]:
        env: dict[Any, tuple] = {}
        is_act: dict[Any, bool] = {}
        for v, a in zip(jaxpr.constvars, consts):
            env[v], is_act[v] = a, False
        for v, a, f in zip(jaxpr.invars, ins, act):
            env[v], is_act[v] = a, f

        def read(v):
            if isinstance(v, jcore.Literal):
                shape = getattr(v.aval, "shape", ())
                return self.axes_of(v.aval, "opaque", "literal array") if shape else (), False
            return env[v], is_act[v]

        for eqn in jaxpr.eqns:
            if not prefix:
                for v in eqn.invars:
                    if not isinstance(v, jcore.Literal):
                        self.first_use.setdefault(v, self.counter)
            ins_axes, ins_act = zip(*[read(v) for v in eqn.invars]) if eqn.invars else ((), ())
            where = _path(prefix, eqn)
            name = eqn.primitive.name
            self.counter += 1
            order = self.counter
            if name in CALLS and _sub_jaxpr(eqn) is not None:
                sub, sub_consts = _sub_jaxpr(eqn)
                if len(sub.invars) != len(eqn.invars):
                    self.ctx.where, self.ctx.primitive, self.ctx.act = _strip_root(where, self.roots), name, list(ins_act)
                    outs = unsupported(self.ctx, eqn, list(ins_axes))
                    out_act = [any(ins_act)] * len(outs)
                else:
                    const_axes = [self.axes_of(c, "opaque", f"constant inside {name}")
                                  if getattr(c, "shape", ()) else () for c in sub_consts]
                    outs, out_act = self.walk(sub, list(ins_axes), list(ins_act), const_axes, where)
                    outs = list(outs)
                    for o, v in zip(outs, eqn.outvars):
                        if len(o) != len(getattr(v.aval, "shape", ())):
                            raise AssertionError(f"internal: rank mismatch returning from {name} at {where}")
            else:
                self.ctx.where, self.ctx.primitive, self.ctx.act = _strip_root(where, self.roots), name, list(ins_act)
                rule = RULES.get(name, unsupported)
                outs = rule(self.ctx, eqn, list(ins_axes))
                out_act = [any(ins_act)] * len(outs)
                if name in ("conv_general_dilated", "dot_general") and rule is not unsupported:
                    self.record(self.ctx.where, eqn, ins_axes, outs)
            for k, (v, axes) in enumerate(zip(eqn.outvars, outs)):
                for d, s in enumerate(axes):
                    self.table.mark_seen(s, (order, k, d))
                if not isinstance(v, jcore.DropVar):
                    env[v], is_act[v] = axes, out_act[k]
        outs = [read(v) for v in jaxpr.outvars]
        return [o[0] for o in outs], [o[1] for o in outs]


def _sub_jaxpr(eqn):
    key = CALLS[eqn.primitive.name]
    sub = eqn.params.get(key)
    if sub is None:
        return None
    if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # ClosedJaxpr
        return sub.jaxpr, sub.consts
    return sub, ()


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def _resolve(model: nn.Module | str, variables, input_shape, name):
    from hobs_jax import models

    if isinstance(model, str):
        name = model
        if variables is None:
            model = models.build(name)
        else:
            widths, nc, ic = models.infer_widths(name, variables)
            model = models.build(name, widths=widths, num_classes=nc, in_channels=ic)
    elif name is None and getattr(model, "arch", None) in models.MODELS:
        name = model.arch
    if input_shape is None:
        input_shape = models.input_shape(name, 1, in_channels=getattr(model, "in_channels", None))
    if variables is None:
        variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), tuple(input_shape)))
    return model, variables, tuple(input_shape), name


def _is_zoo(model, name) -> bool:
    from hobs_jax import models
    from hobs_jax.models.prunable import Prunable

    if isinstance(model, Prunable):
        return model.kind == "zoo"
    return isinstance(model, str) or name is not None or getattr(model, "arch", None) in models.MODELS


def build_graph(model: Any, variables: Mapping | None = None,
                input_shape: Sequence[int] | None = None, *, name: str | None = None,
                dtype=jnp.float32, apply_kwargs: Mapping[str, Any] | None = None,
                strict: bool = False, probe: bool = True) -> Graph:
    """The channel groups of ``model``: a zoo name, a zoo module, a
    :class:`~hobs_jax.models.Prunable`, a ``(module, variables)`` pair, or any linen or
    NNX module.

    Args:
      model: what to trace. A zoo name is built at the widths ``variables`` have; any
        other module goes through :func:`hobs_jax.graph.prunable` (linen modules run by
        :class:`~hobs_jax.graph.linen_model.LinenModel`, NNX modules by
        :class:`~hobs_jax.graph.nnx_model.NNXModel`), so the graph's variable paths are
        the module's own.
      variables: the variables (arrays or ``jax.ShapeDtypeStruct``; only shapes are used);
        optional for zoo models (default widths) and NNX modules (their state).
      input_shape: the input shape including batch (default: the zoo's, batch 1;
        required for other modules).
      name: the zoo name, if ``model`` is a zoo module whose name cannot be inferred.
      apply_kwargs: extra keyword arguments of the module's call (a zoo module gets
        ``train=False``; other modules get their train flag from the adapter).
      strict: raise a one-line ``ValueError`` when an unsupported primitive touches a
        channel group, instead of listing the group as not prunable.
      probe: for modules outside the zoo, rebuild the module once with every prunable
        group at another size and list the groups whose width the module's code does
        not follow as not prunable, naming the layer (``hobs_jax.graph.prunable``).
    Returns:
      a :class:`~hobs_jax.graph.groups.Graph`.
    """
    from hobs_jax.models.prunable import Prunable

    if isinstance(model, tuple) and len(model) == 2 and variables is None:
        model, variables = model
    if _is_zoo(model, name):
        if isinstance(model, Prunable):
            variables = model.variables if variables is None else variables
            input_shape = model.input_shape if input_shape is None else input_shape
            name, model = model.name, model.module
        model, variables, input_shape, name = _resolve(model, variables, input_shape, name)
        kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
        return trace_module(model, variables, input_shape, zoo_name=name, label=name, dtype=dtype,
                            apply_kwargs=kwargs, strict=strict)
    from hobs_jax.graph.prunable import as_prunable, graph_of

    p = as_prunable(model, variables, input_shape, call_kwargs=apply_kwargs)
    if input_shape is not None:
        p = dataclasses.replace(p, input_shape=(1,) + tuple(input_shape[1:]))
    return graph_of(p, strict=strict, probe=probe, dtype=dtype)


def trace_module(model, variables: Mapping, input_shape: Sequence[int], *, zoo_name: str | None = None,
                 label: str | None = None, dtype=jnp.float32, apply_kwargs: Mapping[str, Any] | None = None,
                 fixed: Sequence[tuple] = (), roots: int = 1, strict: bool = False) -> Graph:
    """The graph of ``model.apply(variables, x, **apply_kwargs)`` as traced (no probe).

    ``fixed``: ``(collection, leaf path, axis, reason)`` of variable axes whose size the
    rebuild cannot change (their groups are listed as not prunable with ``reason``);
    ``roots``: leading name-stack components that are not layers (the top module's
    class, an adapter's)."""
    name = zoo_name
    kwargs = {} if apply_kwargs is None else dict(apply_kwargs)
    input_shape = tuple(input_shape)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, **kwargs))(abstract, x)
    leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
    tr = _Tracer(roots)
    var_axes = [tr.axes_of(leaf) for _, leaf in leaves]
    reasons = {(str(c), tuple(str(q) for q in p), int(a)): why for c, p, a, why in fixed}
    for (path, _), axes in zip(leaves, var_axes):
        names = _names(path)
        for d, sp in enumerate(axes):
            why = reasons.get((names[0], names[1:], d))
            if why is not None and sp is not None:
                tr.table.tag(sp, "opaque", why)
    x_axes = tuple(tr.ctx.fresh(n) for n in input_shape)
    for d, sp in enumerate(x_axes):
        what = "channel axis" if (name and d == len(input_shape) - 1) else f"axis {d}"
        tr.table.tag(sp, "pinned", f"tied to the network input's {what}")
        tr.table.mark_seen(sp, (0, 0, d))
    consts = [tr.axes_of(c, "opaque", "constant array") if getattr(c, "shape", ()) else ()
              for c in closed.consts]
    acts = [False] * len(var_axes) + [True]
    outs, _ = tr.walk(closed.jaxpr, var_axes + [x_axes], acts, consts, "")
    for k, axes in enumerate(outs):
        for d, sp in enumerate(axes):
            what = "logits" if d == len(axes) - 1 else f"axis {d}"
            tr.table.tag(sp, "pinned", f"tied to the network output's {what}")
    tr.table.finalize()
    use = [tr.first_use.get(v, tr.counter + 1) for v in closed.jaxpr.invars[:len(leaves)]]
    order = sorted(range(len(leaves)), key=lambda i: (use[i], i))
    return _freeze(tr, [leaves[i] for i in order], [var_axes[i] for i in order], name,
                   label if label is not None else name, input_shape, strict)


def _raw_layout(table: SpaceTable, s: int | None) -> tuple:
    if s is None:
        return ("unit",)
    d = table.decomp(s)
    if d is None:
        return ("atom", table.find(s), table.size(s))
    return (d.kind, tuple(_raw_layout(table, p) for p in d.parts))


def _raw_atoms(raw: tuple) -> list[int]:
    if raw[0] == "atom":
        return [raw[1]]
    if raw[0] == "unit":
        return []
    return [a for p in raw[1] for a in _raw_atoms(p)]


def _final_layout(raw: tuple, ids: Mapping[int, int]) -> Layout:
    if raw[0] == "unit":
        return Atom(None, 1)
    if raw[0] == "atom":
        return Atom(ids.get(raw[1]), raw[2])
    return Composite(raw[0], tuple(_final_layout(p, ids) for p in raw[1]))


def _freeze(tr: _Tracer, leaves, var_axes, name, label, input_shape, strict) -> Graph:
    table = tr.table
    raws = []
    for (path, _), axes in zip(leaves, var_axes):
        names = _names(path)
        for d, s in enumerate(axes):
            if s is not None:
                raws.append((names[0], names[1:], d, _raw_layout(table, s)))
    holders: dict[int, list] = {}
    for col, path, d, raw in raws:
        for a in _raw_atoms(raw):
            holders.setdefault(a, []).append((col, path, d))
    listed = []
    for atom, held in holders.items():
        tags = table.tags(atom)
        seen = table.seen(atom)
        if seen is None or table.size(atom) < 2 or any(t.kind == "spatial" for t in tags):
            continue
        listed.append((seen, min(held), atom))
    listed.sort()
    ids = {atom: i for i, (_, _, atom) in enumerate(listed)}
    axes = tuple(VarAxis(col, path, d, _final_layout(raw, ids)) for col, path, d, raw in raws
                 if any(a in ids for a in _raw_atoms(raw)))
    entries = _width_entries(name, axes)
    by_key = {va.key: va for va in axes}
    members = members_by_group(axes, [table.size(atom) for _, _, atom in listed])
    groups = []
    for gid, (_, _, atom) in enumerate(listed):
        tags = table.tags(atom)
        blocking = [t for t in tags if t.kind == "pinned"] + [t for t in tags if t.kind == "opaque"]
        roles = {t.text for t in tags if t.kind == "role"}
        kind = next((k for k in ("residual", "heads", "head_dim") if k in roles), "channels")
        first = members[gid][0]
        anchor = (first.collection, first.path, first.axis,
                  layout_groups(by_key[(first.collection, first.path, first.axis)].layout).index(gid))
        groups.append(Group(gid, table.size(atom), members[gid], tuple(sorted(entries.get(gid, ()))), not blocking,
                            blocking[0].text if blocking else "",
                            tuple(t.text for t in tags if t.kind == "note"), kind, anchor,
                            tuple(sorted({t.text for t in tags if t.kind == "act"}))))
    ops = tuple(OpCost(where, kind, const, tuple(_final_layout(_raw_layout(table, sp), ids) for sp in spaces))
                for where, kind, const, spaces in tr.ops)
    graph = Graph(label, tuple(input_shape), tuple(groups), axes, ops, zoo=name is not None)
    if strict:
        for g in graph.groups:
            if g.reason.startswith("unsupported primitive"):
                raise ValueError(f"group {g.id} ({g.size} channels at {g.members[0].name} axis "
                                 f"{g.members[0].axis}): {g.reason}")
    return graph


def _width_entries(name: str | None, axes: Sequence[VarAxis]) -> dict[int, set[str]]:
    """group id -> zoo width entries whose axes are exactly that group (contiguously)."""
    if name is None:
        return {}
    from hobs_jax import models

    by_key = {va.key: va for va in axes}
    out: dict[int, set[str]] = {}
    for entry, entry_axes in models.width_axes(name).items():
        for col, path, d in entry_axes:
            va = by_key.get((col, tuple(path), d))
            if va is not None and isinstance(va.layout, Atom) and va.layout.group is not None:
                out.setdefault(va.layout.group, set()).add(entry)
    return out
