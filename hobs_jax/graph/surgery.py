"""Surgery: apply a :class:`~hobs_jax.graph.plan.PrunePlan` to variables and rebuild the
network at its new widths - a real, smaller dense network (zoo, linen or NNX).

* :func:`slice_variables` works for any traced module: every variable axis that holds a
  group is indexed with the kept positions its layout gives (``np.take``; values are
  copied bit for bit, in ``params``, ``batch_stats`` and any other collection).
* :func:`mask_variables` is the reference the pruned network is checked against: the
  original network with every slice of every removed channel set to zero, in every
  member (producer kernels and biases, BN/LN scales, shifts and running statistics,
  consumer kernels). The masking point is therefore the producer's *output after its
  normalization*: a BN'd conv's channel leaves BN as ``0 * (x - 0) * rsqrt(0 + eps) + 0
  = 0`` and every activation used by the zoo maps 0 to 0 (ReLU, ReLU6, SiLU, GELU), so a
  removed channel is exactly zero wherever it is consumed; an SE gate multiplies that
  zero. For ViT heads and head dims the q/k/v/out slices are zero, so a removed head's
  value and output are zero. Equality with the pruned network holds exactly (up to
  float summation order) for every group whose :attr:`Group.mask_exact` is True; groups
  reduced over by a normalization (ViT's residual stream under LayerNorm: the mean and
  variance divide by the width) are not equivalent to masking, by nature.
* :func:`apply_plan` slices and rebuilds through the network's
  :class:`~hobs_jax.models.Prunable`: the zoo from its width entries, a user's linen
  module by running its own ``__call__`` at the sliced widths, an NNX module by
  replacing its arrays and layer attributes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.graph.groups import Graph, layout_channels, layout_groups, layout_indices
from hobs_jax.graph.plan import PrunePlan, validate
from hobs_jax.models.prunable import Prunable


def _by_leaf(graph: Graph) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for va in graph.axes:
        out.setdefault((va.collection,) + va.path, []).append(va)
    return out


def _removing(graph: Graph, plan: PrunePlan) -> dict[int, np.ndarray]:
    return {g: np.asarray(idx, dtype=np.int64) for g, idx in plan.keep if len(idx) < graph.group(g).size}


def _like(leaf, a: np.ndarray):
    """``a`` as the same kind of array as ``leaf``: numpy stays numpy (float64 stays
    float64 without x64), a jax array becomes one (``device_put``: ``jnp.asarray`` would
    compile a conversion per shape)."""
    return jax.device_put(a) if isinstance(leaf, jax.Array) else a


def _map_members(graph: Graph, variables: Any, plan: PrunePlan, edit) -> Any:
    """Apply ``edit(array, member_axes, keep) -> array`` to every leaf that a group the
    plan prunes touches (``member_axes``: those groups' member axes on that leaf; ``keep``:
    group id -> kept indices); other leaves are returned as they are (the same objects)."""
    validate(plan, graph)
    keep = _removing(graph, plan)
    by_leaf = _by_leaf(graph)

    def visit(path, leaf):
        key = tuple(str(getattr(p, "key", p)) for p in path)
        vas = [va for va in by_leaf.get(key, ()) if set(layout_groups(va.layout)) & set(keep)]
        return _like(leaf, edit(np.array(leaf), vas, keep)) if vas else leaf

    return jax.tree_util.tree_map_with_path(visit, variables)


def slice_variables(graph: Graph, variables: Any, plan: PrunePlan) -> Any:
    """``variables`` with every removed channel cut out of every member axis.

    Leaves no group touches are returned as they are (the same objects)."""
    def cut(a, vas, keep):
        for va in vas:
            a = np.take(a, layout_indices(va.layout, keep), axis=va.axis)
        return a

    return _map_members(graph, variables, plan, cut)


def mask_variables(graph: Graph, variables: Any, plan: PrunePlan) -> Any:
    """``variables`` with every slice of every removed channel zeroed (see module doc)."""
    def zero(a, vas, keep):
        for va in vas:
            alive = np.ones(va.layout.size, dtype=bool)
            for gid in set(layout_groups(va.layout)) & set(keep):
                ch = layout_channels(va.layout, gid)
                removed = np.ones(graph.group(gid).size, dtype=bool)
                removed[keep[gid]] = False
                alive &= ~((ch >= 0) & removed[np.maximum(ch, 0)])
            shape = [1] * a.ndim
            shape[va.axis] = -1
            a = np.where(alive.reshape(shape), a, np.zeros((), a.dtype))
        return a

    return _map_members(graph, variables, plan, zero)


def zoo_name(model: nn.Module | str) -> str:
    """The registry name of a zoo model given by name or as a module."""
    from hobs_jax import models

    if isinstance(model, str):
        models.get_entry(model)
        return model
    arch = getattr(model, "arch", None)
    if arch in models.MODELS:
        return arch
    raise ValueError(f"{type(model).__name__} is not a zoo model (not built by hobs_jax.models.build)")


def _flat_shapes(tree) -> dict[tuple, tuple]:
    return {tuple(str(getattr(p, "key", p)) for p in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_zoo(p: Prunable, graph: Graph) -> None:
    """Every sliced shape against the zoo model built at the new widths."""
    from hobs_jax import models

    shape = (1,) + tuple(graph.input_shape[1:])
    expected = _flat_shapes(jax.eval_shape(lambda: models.init(p.module, jax.random.key(0), shape)))
    got = _flat_shapes(p.variables)
    for key, shp in expected.items():
        if got.get(key) != shp:
            raise ValueError(f"{p.name}: pruned {'/'.join(key)} has shape {got.get(key)}, the model at the "
                             f"new widths expects {shp}")


def _check_rebuilt(before: Prunable, p: Prunable, graph: Graph, plan: PrunePlan) -> None:
    """The rebuilt network runs, gives outputs of the original's shape, and its graph
    has every pruned group at its anchor with the kept size (one-line error naming the
    layer otherwise)."""
    from hobs_jax.graph.prunable import ROOTS, _abstract, _runs
    from hobs_jax.graph.trace import trace_module

    out = _runs(p.label, p.module, p.variables, p.input_shape, "rebuilt at the pruned widths fails")
    ref = jax.eval_shape(lambda v, x: before.module.apply(v, x, train=False), _abstract(before.variables),
                         jax.ShapeDtypeStruct(before.input_shape, jnp.float32))
    if jax.tree.map(np.shape, out) != jax.tree.map(np.shape, ref):
        raise ValueError(f"{p.label}: the pruned network's output has shape {jax.tree.map(np.shape, out)}, "
                         f"the original's {jax.tree.map(np.shape, ref)}")
    pg = trace_module(p.module, p.variables, p.input_shape, label=p.label, fixed=p.fixed, roots=ROOTS[p.kind],
                      apply_kwargs={"train": False})
    for gid, idx in _removing(graph, plan).items():
        g = graph.group(gid)
        h = pg.find_anchor(g.anchor)
        if len(idx) > 1 and (h is None or h.size != len(idx)):
            m = g.members[0]
            raise ValueError(f"{p.label}: group {gid} keeps {len(idx)} channels but the rebuilt module has "
                             f"{'none' if h is None else h.size} at {m.name} axis {m.axis}: its code does not "
                             f"follow that width")


def apply_plan(model: Any, variables: Any = None, plan: PrunePlan | None = None, *,
               graph: Graph | None = None, input_shape=None):
    """Prune a network: a real, smaller network at the kept widths.

    Forms (the result mirrors the input):
      * ``apply_plan(prunable, plan)`` -> the pruned :class:`~hobs_jax.models.Prunable`
        (``apply_plan(prunable, variables, plan)`` slices ``variables`` instead of the
        prunable's own, e.g. a method's compensated ones);
      * ``apply_plan(module_or_zoo_name, variables, plan)`` -> ``(module, variables)``;
      * ``apply_plan(nnx_module, plan)`` -> the pruned ``nnx.Module``.

    Zoo models are rebuilt from their width entries (``models.build(name, widths=...)``,
    other constructor fields such as ViT's ``scale_dim`` carried over) and every sliced
    shape is checked against the rebuilt model; a user's linen module runs its own
    ``__call__`` with each layer sized from its variables, an NNX module gets its arrays
    and layer attributes replaced (:mod:`hobs_jax.graph.linen_model`,
    :mod:`hobs_jax.graph.nnx_model`); the rebuilt network is checked to run and to
    have every pruned group at the kept size. An empty plan returns the input itself.

    Args:
      graph: the graph of the network, if already built (saves a trace).
      input_shape: the input shape of a module outside the zoo (default: the graph's).
    """
    from flax import nnx

    from hobs_jax.graph.prunable import as_prunable, graph_of

    form = "prunable" if isinstance(model, Prunable) else "nnx" if isinstance(model, nnx.Module) else "pair"
    if plan is None and isinstance(variables, PrunePlan):
        variables, plan = None, variables
    if plan is None:
        raise ValueError("apply_plan needs a plan")
    if form == "pair" and variables is None:
        raise ValueError("apply_plan(module, variables, plan): variables are required")
    if input_shape is None and graph is not None and form != "prunable":
        input_shape = graph.input_shape
    p = as_prunable(model, None if form != "pair" else variables, input_shape)
    if form == "prunable" and variables is not None:
        p = p.with_variables(variables)
    if graph is None:
        graph = graph_of(p)
    validate(plan, graph)
    if not plan.removes_any(graph):
        new = p
    else:
        for gid in _removing(graph, plan):
            g = graph.group(gid)
            if p.kind == "zoo" and not g.widths:
                raise ValueError(f"group {gid} ({g.members[0].name} axis {g.members[0].axis}) sizes no width "
                                 f"entry of {p.name}; the zoo cannot rebuild it")
        new = p.rebuild(slice_variables(graph, p.variables, plan))
        if p.kind == "zoo":
            _check_zoo(new, graph)
        else:
            _check_rebuilt(p, new, graph, plan)
    if form == "prunable":
        return new
    if form == "nnx":
        return new.to_nnx() if new is not p else model
    return (new.module, new.variables) if new is not p else (model, variables)
