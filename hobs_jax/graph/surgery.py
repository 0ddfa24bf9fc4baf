"""Surgery: apply a :class:`~hobs_jax.graph.plan.PrunePlan` to variables and rebuild the
zoo model at its new widths - a real, smaller dense network.

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
* :func:`apply_plan` needs a *zoo* model (by name or as a zoo module): widths come from
  the registry (``models.build(name, widths=...)``). For other modules, slice the
  variables and rebuild the module yourself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from hobs_jax.graph.groups import Graph, layout_channels, layout_groups, layout_indices
from hobs_jax.graph.plan import PrunePlan, validate
from hobs_jax.graph.trace import build_graph

_SKIP_FIELDS = ("parent", "name", "widths", "num_classes", "in_channels")


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
    raise ValueError(f"apply_plan needs a zoo model (by name or built by hobs_jax.models.build); "
                     f"{type(model).__name__} is not one: slice its variables with slice_variables")


def _extra_fields(name: str, model: nn.Module) -> dict:
    """Constructor fields of ``model`` that differ from the registry's defaults (e.g.
    ViT's ``scale_dim``), so the rebuilt model is configured identically."""
    from hobs_jax import models

    ref = models.build(name, widths=dict(model.widths), num_classes=model.num_classes,
                       in_channels=model.in_channels)
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in _SKIP_FIELDS and f.init and getattr(model, f.name) != getattr(ref, f.name)}


def _flat_shapes(tree) -> dict[tuple, tuple]:
    return {tuple(str(getattr(p, "key", p)) for p in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def apply_plan(model: nn.Module | str, variables: Mapping, plan: PrunePlan, *,
               graph: Graph | None = None) -> tuple[nn.Module, Any]:
    """Prune a zoo model: ``(pruned_model, pruned_variables)``.

    Args:
      model: zoo name or zoo module (built by ``hobs_jax.models.build``). A name is built
        at the widths ``variables`` have with default constructor fields; pass the module
        when it was built with others (e.g. a ViT with a non-default ``scale_dim``).
      variables: its variables (``params``, ``batch_stats``).
      plan: a plan for this model's graph.
      graph: the graph, if already built (saves a trace).
    Returns:
      the same model class built by ``models.build(name, widths=...)`` at the new widths
      (other constructor fields carried over), and the sliced variables. An empty plan
      returns ``model`` and ``variables`` themselves.
    """
    from hobs_jax import models

    name = zoo_name(model)
    if isinstance(model, str):
        widths, nc, ic = models.infer_widths(name, variables)
        model = models.build(name, widths=widths, num_classes=nc, in_channels=ic)
    if graph is None:
        graph = build_graph(model, variables, name=name)
    validate(plan, graph)
    if not plan.removes_any(graph):
        return model, variables
    widths = dict(model.widths)
    for gid, idx in _removing(graph, plan).items():
        g = graph.group(gid)
        if not g.widths:
            raise ValueError(f"group {gid} ({g.members[0].name} axis {g.members[0].axis}) sizes no width "
                             f"entry of {name}; the zoo cannot rebuild it")
        for entry in g.widths:
            widths[entry] = len(idx)
    new_vars = slice_variables(graph, variables, plan)
    new_model = models.build(name, widths=widths, num_classes=model.num_classes,
                             in_channels=model.in_channels, **_extra_fields(name, model))
    shape = (1,) + tuple(graph.input_shape[1:])
    expected = _flat_shapes(jax.eval_shape(lambda: models.init(new_model, jax.random.key(0), shape)))
    got = _flat_shapes(new_vars)
    for key, shp in expected.items():
        if got.get(key) != shp:
            raise ValueError(f"{name}: pruned {'/'.join(key)} has shape {got.get(key)}, the model at the "
                             f"new widths expects {shp}")
    return new_model, new_vars
