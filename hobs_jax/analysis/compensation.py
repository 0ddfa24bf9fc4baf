"""How well H-OBS's compensation repairs one block: prune chosen channel groups, compensate
their consumers, and measure each consumer's output and a block's output against the
dense network on held-out images, with and without the compensation.

This is the measurement behind docs/hobs.md, Sec. 7 (depthwise convs, squeeze-excitation,
attention heads): for a group g of the channel graph, :func:`prune_groups` runs H-OBS's
own parts on g alone (the consumers' Hessians, the greedy OBS path, the compensation of
:func:`hobs_jax.obs.compensate_layers`), so everything outside the block stays dense and
an error at the block's output is the block's own. Which layers are g's consumers,
producers and pass-through depthwise convs comes from the graph
(:func:`hobs_jax.methods.group_roles`), as in the method.

    case = prune_groups(prunable, graph, [gid], calib_images, keep=0.5)
    consumer_errors(prunable, case, test_images)     # per consumer: compensated vs not
    output_error(prunable, case.compensated, test_images, path) vs case.uncompensated

Per consumer layer ``Y = X W`` (``X`` its dense input rows, ``K`` the kept rows), the
compensated kernel is ``W'_K = (H_KK)^{-1} H_K: W`` with ``H = (2/n) X^T X`` dampened by
``lambda = damp * mean(diag H)``, i.e. the ridge least squares
``argmin (2/n) ||X_K W' - X W||^2 + lambda ||W' - W_K||^2`` anchored at the dense
weights: exact for that layer's output on the calibration rows up to the dampening
(``refit=True``: plain least squares). What follows a consumer (a nonlinearity, a gate)
sees only that layer's error, so block-level errors are measured, not implied.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import obs
from hobs_jax.graph import Graph, make_plan, mask_variables
from hobs_jax.methods import group_roles
from hobs_jax.obs import ChannelGroup, SolvedLayers
from hobs_jax.stats.layers import LayerInfo, capture_inputs, layer_rows, trace_layers

Path = tuple[str, ...]

__all__ = ["BlockCase", "consumer_errors", "intermediate", "output_error", "prune_groups", "relative_error"]


@dataclasses.dataclass(frozen=True)
class BlockCase:
    """Groups pruned and compensated on their own (:func:`prune_groups`).

    Attributes:
      roles: {group id: ChannelGroup} of the pruned groups (consumers, producers,
        pass-through depthwise convs, from the graph).
      removed: {group id: removed channels (sorted)}; ``plan`` keeps the rest.
      rows: {consumer path: (LayerInfo, removed kernel-matrix rows)}.
      compensated: full-size variables, consumers compensated, every member of a removed
        channel masked (``graph.mask_variables``): the pruned network at full size.
      uncompensated: the dense variables masked the same way (removal without compensation).
      unmasked: full-size compensated variables before masking (what the plan slices).
      infos: the traced layers.
    """

    roles: Mapping[int, ChannelGroup]
    removed: Mapping[int, np.ndarray]
    plan: object
    rows: Mapping[Path, tuple[LayerInfo, np.ndarray]]
    compensated: Mapping
    uncompensated: Mapping
    unmasked: Mapping
    infos: Mapping[Path, LayerInfo]


def prune_groups(prunable, graph: Graph, gids: Sequence[int], images: np.ndarray, *, keep: float = 0.5,
                 damp: float = 0.01, refit: bool = False, batch_size: int = 256) -> BlockCase:
    """Remove ``1 - keep`` of the channels of each group in ``gids`` along H-OBS's greedy
    path and compensate their consumers (module doc); the other groups stay whole.

    ``prunable``: a :class:`~hobs_jax.models.Prunable` (its module and variables);
    ``images`` [N, H, W, C] calibration images. A group with no channel-mixing consumer
    or one normalized over its channels (LayerNorm) is refused in one line: it has
    nothing to compensate."""
    model, variables = prunable.module, prunable.variables
    infos = trace_layers(model, variables, (1,) + tuple(np.shape(images)[1:]))
    every = group_roles(graph, infos)
    roles = {}
    for g in gids:
        if g not in every:
            raise ValueError(f"group {g} is not a prunable group of {prunable.label}")
        r = every[g]
        if not r.consumers or not r.compensate:
            raise ValueError(f"group {g} has nothing to compensate ({r.note or 'no consumer'})")
        roles[g] = r
    paths = list(dict.fromkeys(s.layer.path for r in roles.values() for s in r.consumers))
    stats = obs.layer_hessians(model, variables, np.asarray(images, np.float32), paths=paths,
                               batch_size=batch_size, progress=False, infos=infos)
    solved = SolvedLayers(stats, damp)
    flat = obs.flat_variables(variables)
    removed = {}
    for g, r in roles.items():
        n = r.size - max(1, int(round(keep * r.size)))
        removed[g] = np.sort(obs.select(r, n, flat, solved)[0])
    unmasked = obs.compensate_layers(variables, roles, removed, flat, solved, refit=refit)
    plan = make_plan(graph, {g: np.setdiff1d(np.arange(roles[g].size), removed[g]) for g in roles})
    rows = {p: (e[0], np.unique(np.concatenate(e[1]))) for p, e in obs.removed_rows(roles, removed).items()}
    return BlockCase(roles, removed, plan, rows, mask_variables(graph, unmasked, plan),
                     mask_variables(graph, variables, plan), unmasked, infos)


def relative_error(a, ref) -> float:
    """||a - ref|| / ||ref|| (Frobenius, float64)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def consumer_errors(prunable, case: BlockCase, images: np.ndarray) -> dict[str, dict[str, float]]:
    """Per consumer layer of the pruned groups: the relative error of its output
    ``X_K W'_K`` against the dense ``X W`` on ``images`` (``X``: the dense network's input
    to that layer), with the compensation (``compensated``) and without it
    (``uncompensated``: the kept rows' dense weights)."""
    dense = obs.flat_variables(prunable.variables)
    comp = obs.flat_variables(case.unmasked)
    xs = capture_inputs(prunable.module, prunable.variables, jnp.asarray(images, jnp.float32),
                        [p for p in case.rows])
    out = {}
    for p, (info, rem) in case.rows.items():
        x = np.asarray(layer_rows(info, xs[p]), np.float64)
        if info.use_bias:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        w = obs.layer_weights(dense, info, info.use_bias)
        wc = obs.layer_weights(comp, info, info.use_bias)
        wn = w.copy()
        wn[rem] = 0.0
        y = x @ w
        out[info.name] = {"compensated": relative_error(x @ wc, y), "uncompensated": relative_error(x @ wn, y),
                          "removed_rows": int(len(rem)), "rows": int(w.shape[0])}
    return out


def intermediate(model, variables, images: np.ndarray, key: Sequence[str]) -> np.ndarray:
    """The value sown under ``intermediates/<key...>`` (a zoo stage output, e.g.
    ``("features", "features.17:out")``; the first sown value) on ``images``, eval mode."""
    _, state = _sown(model)(variables, jnp.asarray(images, jnp.float32))
    node = state["intermediates"]
    for k in key:
        if k not in node:
            raise ValueError(f"no intermediate {'/'.join(key)} (have {sorted(node)} at {k!r})")
        node = node[k]
    return np.asarray(node[0] if isinstance(node, (tuple, list)) else node)


@functools.lru_cache(maxsize=8)
def _sown(model):
    """jit(variables, x) -> (output, {'intermediates': ...}), once per model."""
    return jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))


def output_error(prunable, variables, images: np.ndarray, key: Sequence[str], *, minus: Sequence[str] | None = None,
                 dense: np.ndarray | None = None) -> float:
    """Relative error of the sown value ``key`` with ``variables`` against the dense
    network on ``images``; ``minus``: subtract the sown value ``minus`` from both first
    (a residual block's branch: its output minus its input)."""
    def value(v):
        y = intermediate(prunable.module, v, images, key)
        return y - intermediate(prunable.module, v, images, minus) if minus else y
    ref = value(prunable.variables) if dense is None else dense
    return relative_error(value(variables), ref)
