"""``depgraph``: DepGraph's group-norm importance with its group sparse-learning phase.

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023, Sec. 3.3 and
Torch-Pruning 1.6.1's ``GroupNormPruner`` + ``GroupMagnitudeImportance(p=2)``.
The method is the composition ``group_norm`` regularizer -> ``group_norm`` scorer ->
uniform/global allocator -> no compensation; the regularizer is the training-time shape
of a part (:class:`hobs_jax.methods.parts.Regularizer`): an optax transformation the
training engine applies without knowing the method.

1. **Sparse learning** (``sparse_steps`` > 0): the unpruned network trains for
   ``sparse_steps`` steps through the task's fine-tune callback with
   :func:`group_norm_regularizer` added to the gradients before the optimizer (as
   Torch-Pruning calls ``pruner.regularize(model)`` between ``backward()`` and
   ``optimizer.step()``).
2. **Importance**: for every channel c of a group g,
   ``I_{g,c} = sum over members m of ||w_m[c]||_2^2`` where the members are every
   kernel slice (producer output channel, consumer input channel) and normalization
   scale of the group; biases are left out (Torch-Pruning's default ``bias=False``).
3. **Allocation**: uniform or a global threshold over scores divided by their group's
   mean (Torch-Pruning's ``normalizer='mean'``), through :mod:`hobs_jax.allocation`.

The regularizer, per prunable group g with channels c = 1..C_g, at every step:

    imp_c   = sqrt(I_{g,c})                                   (I from the current weights)
    gamma_c = 2 ** (alpha * (max_c imp - imp_c) / (max_c imp - min_c imp))   in [1, 2^alpha]
    grad[w_m[c]] += reg * gamma_c * w_m[c]        for every non-bias member m of g

i.e. the gradient of ``reg / 2 * sum_c gamma_c * I_{g,c}`` with gamma held fixed: a
per-channel weight decay that pushes the group's weakest channels (relative to the
group's strongest) up to 2^alpha times harder, the paper's Eq. for R(g, k) with
gamma_k = 2^(alpha (I_max - I_k) / (I_max - I_min)). Torch-Pruning computes gamma from
the square root of its (mean-reduced, mean-normalized) importance, which only rescales
imp and leaves gamma unchanged; so does this module. A group whose channels all have the
same norm gets gamma = 1 (Torch-Pruning would divide 0 by 0 there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hobs_jax.graph import Graph, layout_channels, layout_groups
from hobs_jax.methods.base import PruneTask
from hobs_jax.methods.magnitude import NoOptions
from hobs_jax.methods.parts import Scores, Selection
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.options import Options


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one group's channels sit in one parameter: ``path`` inside ``params``,
    ``axis``, and for each ``positions[i]`` along that axis its channel ``channels[i]``."""

    path: tuple[str, ...]
    axis: int
    positions: np.ndarray
    channels: np.ndarray


def group_slots(graph: Graph, *, include_bias: bool = False,
                groups: tuple[int, ...] | None = None) -> dict[int, list[Slot]]:
    """For each prunable group (or those in ``groups``): its members in ``params``
    (kernels and norm scales; biases only with ``include_bias``)."""
    wanted = set(g.id for g in graph.prunable) if groups is None else set(groups)
    out: dict[int, list[Slot]] = {g: [] for g in sorted(wanted)}
    for va in graph.axes:
        if va.collection != "params" or (va.path[-1] == "bias" and not include_bias):
            continue
        for gid in dict.fromkeys(layout_groups(va.layout)):
            if gid not in wanted:
                continue
            ch = layout_channels(va.layout, gid)
            pos = np.flatnonzero(ch >= 0)
            out[gid].append(Slot(tuple(va.path), va.axis, pos, ch[pos]))
    return out


def _flat(tree) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _per_position_sq(w, axis: int, xp):
    other = tuple(d for d in range(w.ndim) if d != axis)
    return xp.sum(w * w, axis=other) if other else w * w


def group_sq_norms(params: Mapping, slots: Mapping[int, list[Slot]],
                   sizes: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Host (numpy float64) ``I_{g,c}``: per group, [size] sums of squares over its slots."""
    flat = _flat(params)
    out = {}
    for gid, sl in slots.items():
        acc = np.zeros(sizes[gid])
        for s in sl:
            w = np.asarray(flat[s.path], np.float64)
            np.add.at(acc, s.channels, _per_position_sq(w, s.axis, np)[s.positions])
        out[gid] = acc
    return out


class GroupNormRegularizerState(NamedTuple):
    """``count``: how many times the regularizer was applied (Torch-Pruning's ``cnt``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's state idiom; the field shadows tuple.count


def group_norm_regularizer(graph: Graph, reg: float, alpha: float = 4.0,
                           groups: tuple[int, ...] | None = None) -> optax.GradientTransformation:
    """DepGraph's group sparsity term as an optax transformation (see the module doc).

    Args:
      graph: channel groups of the model being trained (its prunable groups, or
        ``groups``, are regularized).
      reg: coefficient (>= 0); alpha: gamma in [1, 2^alpha] (>= 0).
    Returns:
      a GradientTransformation whose ``update(grads, state, params)`` returns
      ``grads + reg * gamma * w`` on every non-bias member slice of every group (the
      same pytree structure as ``params``); ``params`` is required.
    """
    if not reg >= 0:
        raise ValueError(f"depgraph: reg={reg!r} must be >= 0")
    if not alpha >= 0:
        raise ValueError(f"depgraph: alpha={alpha!r} must be >= 0")
    slots = group_slots(graph, groups=groups)
    sizes = {g.id: g.size for g in graph.groups}

    def init(params):
        del params
        return GroupNormRegularizerState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("group_norm_regularizer needs params (optax update(..., params))")
        with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
        index = {tuple(str(getattr(p, "key", p)) for p in path): i
                 for i, (path, _) in enumerate(with_path)}
        leaves_u = [leaf for _, leaf in with_path]
        flat_p = _flat(params)
        extra: dict[int, jax.Array] = {}
        for gid, sl in slots.items():
            sq = jnp.zeros(sizes[gid], jnp.float32)
            for s in sl:
                per = _per_position_sq(flat_p[s.path].astype(jnp.float32), s.axis, jnp)
                sq = sq.at[s.channels].add(per[s.positions])
            imp = jnp.sqrt(sq)
            span = jnp.max(imp) - jnp.min(imp)
            rel = jnp.where(span > 0, (jnp.max(imp) - imp) / jnp.where(span > 0, span, 1.0), 0.0)
            gamma = jax.lax.stop_gradient(2.0 ** (alpha * rel))
            for s in sl:
                w = flat_p[s.path]
                mult = jnp.zeros(w.shape[s.axis], w.dtype).at[s.positions].set(
                    gamma[s.channels].astype(w.dtype))
                shape = [1] * w.ndim
                shape[s.axis] = w.shape[s.axis]
                term = reg * w * mult.reshape(shape)
                i = index[s.path]
                extra[i] = term if i not in extra else extra[i] + term
        new = [u + extra[i].astype(u.dtype) if i in extra else u for i, u in enumerate(leaves_u)]
        return jax.tree_util.tree_unflatten(treedef, new), GroupNormRegularizerState(state.count + 1)

    return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class GroupNormOptions(Options):
    """sparse_steps: steps of group sparse learning before pruning (0: none); reg:
    regularization coefficient (Torch-Pruning's CIFAR ResNet-56 recipe: 5e-4); alpha:
    gamma ranges over [1, 2^alpha] (Torch-Pruning: 2**4)."""

    sparse_steps: int = 200
    reg: float = 5e-4
    alpha: float = 4.0

    def check(self):
        self.require(self.sparse_steps >= 0, "sparse_steps", "must be an int >= 0")
        self.require(self.reg >= 0, "reg", "must be >= 0")
        self.require(self.alpha >= 0, "alpha", "must be >= 0")

    @classmethod
    def smoke(cls) -> dict:
        return {"sparse_steps": 2}


class GroupNormRegularizer:
    """DepGraph's sparse-learning phase (module doc): :func:`group_norm_regularizer` as
    the gradient transformation of ``sparse_steps`` training steps."""

    name = "group_norm"
    Options = GroupNormOptions
    needs_data = False

    def check(self, task: PruneTask, o: GroupNormOptions) -> None:
        if o.sparse_steps > 0 and task.finetune is None:
            raise ValueError(f"depgraph: sparse_steps={o.sparse_steps} needs a training callback (task.finetune "
                             f"is None); pass finetune=... or set sparse_steps=0")

    def steps(self, o: GroupNormOptions) -> int:
        return int(o.sparse_steps)

    def transform(self, task: PruneTask, o: GroupNormOptions) -> optax.GradientTransformation:
        return group_norm_regularizer(task.graph, float(o.reg), float(o.alpha))

    def loss(self, task: PruneTask, o: GroupNormOptions):
        return None

    def info(self, o: GroupNormOptions) -> dict:
        return {"sparse_steps": int(o.sparse_steps), "reg": float(o.reg), "alpha": float(o.alpha)}


class GroupNormScorer:
    """``I_{g,c}``: the sum of squares of channel c's slices over the group's non-bias
    members (module doc, step 2), on the variables after the sparse phase."""

    name = "group_norm"
    Options = NoOptions
    needs_data = False

    def score(self, sel: Selection, o: NoOptions) -> Scores:
        graph = sel.task.graph
        return Scores.from_importance(group_sq_norms(sel.task.variables["params"], group_slots(graph),
                                                     {g.id: g.size for g in graph.groups}))

    def report(self, sel, keep, o) -> dict:
        return {}


register_part("regularizer", GroupNormRegularizer())
register_part("scorer", GroupNormScorer())
register_method("depgraph", regularizer="group_norm", scorer="group_norm", allocators=("uniform", "global"),
                compensator="none", defaults=dict(normalize="mean"),
                summary="DepGraph: group sparse learning (GroupNormPruner regularizer), group L2^2 "
                        "importance, uniform/global allocation")
