"""How well H-OBS's compensation repairs one block: prune chosen channel groups, compensate
their consumers, and measure each consumer's output and a block's output against the
dense network on held-out images, with and without the compensation.

This is the measurement behind docs/hobs.md, Sec. 8 (depthwise convs, squeeze-excitation,
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
    plan = make_plan(graph, {g: [int(c) for c in np.setdiff1d(np.arange(roles[g].size), removed[g])] for g in roles})
    rows = {p: (e[0], np.unique(np.concatenate(e[1]))) for p, e in obs.removed_rows(roles, removed).items()}
    return BlockCase(roles, removed, plan, rows, mask_variables(graph, unmasked, plan),
                     mask_variables(graph, variables, plan), unmasked, infos)


def relative_error(a, ref) -> float:
    """||a - ref|| / ||ref|| (Frobenius, float64)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref)) / max(float(np.linalg.norm(ref)), 1e-30)


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


#: The last block of each small zoo form (docs/hobs.md, Sec. 8): the width entries of the
#: groups pruned, the sown block output, and the sown block input when the figure is the
#: block's residual branches (ViT: the encoder layer's output minus its input).
LAST_BLOCKS = {
    "mobilenet_v2_small": (("features.17.hidden",), ("features.17:out",), None),
    "efficientnet_b0_small": (("features.7.0.hidden",), ("features.7:out",), None),
    "vit_tiny_p4": (("encoder_layer_5.heads", "encoder_layer_5.mlp"), ("encoder", "layers", "encoder_layer_5:out"),
                    ("encoder", "layers", "encoder_layer_4:out")),
}


def _no_dropout(family: str) -> dict:
    """Constructor fields that turn dropout and stochastic depth off: identical in eval
    mode, and BN re-estimation runs the train-mode forward without a dropout RNG."""
    off: dict = {"mobilenet_v2": {"dropout": 0.0}, "efficientnet": {"dropout": 0.0, "stochastic_depth_prob": 0.0}}
    return off.get(family, {})


def random_calibrated(model, shape: tuple[int, ...], calib: int, test: int, seed: int):
    """Random variables of ``model`` (zoo initialization, ``seed``) with BatchNorm
    statistics re-estimated on ``calib`` Fashion-MNIST training images, so activations
    have a trained network's scale. Returns (variables, calibration images [calib, H, W, C],
    their labels, the first ``test`` test images)."""
    from hobs_jax import models
    from hobs_jax.data import get_source, sample_indices
    from hobs_jax.stats import reestimate_bn

    src = get_source("fashion_mnist", augment=False)
    x, y = src.batch("train", sample_indices(src.size("train"), calib, seed), train=False)
    t, _ = src.batch("test", np.arange(test), train=False)
    x, t = np.asarray(x, np.float32), np.asarray(t, np.float32)
    v = models.random_variables(model, shape, seed=seed)
    if "batch_stats" in v:
        v = reestimate_bn(model, v, [x[i:i + 128] for i in range(0, len(x), 128)])
    return v, x, y, t


def last_block_study(name: str, *, calib: int = 512, test: int = 1000, keep: float = 0.5, damp: float = 0.01,
                     seed: int = 0) -> dict:
    """The figure of docs/hobs.md, Sec. 8 for zoo model ``name`` (a key of
    :data:`LAST_BLOCKS`): random weights (``seed``; no trained checkpoint), BatchNorm
    statistics re-estimated on ``calib`` Fashion-MNIST training images (which are also
    the calibration images), ``keep`` of the last block's groups kept by H-OBS's path;
    relative errors of each consumer and of the block's output on the first ``test``
    test images, with and without compensation."""
    import time

    from hobs_jax import models
    from hobs_jax.graph import as_prunable, graph_of

    if name not in LAST_BLOCKS:
        raise ValueError(f"no last-block study for {name!r}; have {sorted(LAST_BLOCKS)}")
    widths, key, minus = LAST_BLOCKS[name]
    t0 = time.perf_counter()
    family = models.get_entry(name).family
    model = models.build(name, **_no_dropout(family))
    shape = models.input_shape(name, 1)
    v, x, _, t = random_calibrated(model, shape, calib, test, seed)
    p = as_prunable(model, v, shape)
    graph = graph_of(p)
    gids = [g.id for g in graph.prunable if set(g.widths) & set(widths)]
    case = prune_groups(p, graph, gids, x, keep=keep, damp=damp)
    dense = intermediate(p.module, p.variables, t, key)
    if minus:
        dense = dense - intermediate(p.module, p.variables, t, minus)
    return {
        "model": name, "groups": {str(g): list(graph.group(g).widths) for g in gids},
        "sizes": {str(g): int(case.roles[g].size) for g in gids},
        "removed": {str(g): int(len(case.removed[g])) for g in gids},
        "consumers": consumer_errors(p, case, t),
        "block": {"output": "/".join(key) + (f" - {'/'.join(minus)}" if minus else ""),
                  "compensated": output_error(p, case.compensated, t, key, minus=minus, dense=dense),
                  "uncompensated": output_error(p, case.uncompensated, t, key, minus=minus, dense=dense)},
        "calibration_images": int(len(x)), "test_images": int(len(t)), "damp": damp, "seed": seed,
        "weights": "random (seed), BatchNorm statistics re-estimated on the calibration images; not trained",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def refit_study(name: str, *, divisor: int = 4, calib: int = 256, test: int = 256, target: float = 0.5,
                seed: int = 0) -> dict:
    """The whole H-OBS method on zoo model ``name`` at ``1/divisor`` of its widths (random
    weights, BN re-estimated on the ``calib`` calibration images, uniform allocation at
    ``target`` of the MACs), three ways: no sequential refit (``propagate=0``), the refit
    of every layer (``propagate_min_rows=0``), and the default (sample-starved layers keep
    their OBS compensation). Per way: the relative error of the logits on ``test``
    held-out images against the dense network, and the layers left un-refit
    (docs/hobs.md, Sec. 8). Random networks: the figures compare the three ways, they
    say nothing of accuracy."""
    import time

    from hobs_jax import models
    from hobs_jax.methods import Calibration, prune

    family = models.get_entry(name).family
    widths = {k: max(2, w // divisor) for k, w in models.default_widths(name).items()}
    model = models.build(name, widths=widths, **_no_dropout(family))
    shape = models.input_shape(name, 1)
    v, x, y, t = random_calibrated(model, shape, calib, test, seed)
    dense = np.asarray(jax.jit(model.apply)(v, jnp.asarray(t)))
    out: dict = {"model": name, "divisor": divisor, "calibration_images": calib, "test_images": test, "target": target,
           "weights": "random (seed), BatchNorm statistics re-estimated on the calibration images; not trained",
           "ways": {}}
    ways: dict[str, dict] = {"propagate=0": {"propagate": 0}, "refit every layer": {"propagate_min_rows": 0.0},
                             "default": {}}
    for way, opts in ways.items():
        t0 = time.perf_counter()
        r = prune("hobs", model, v, target=target, calib=Calibration(x, np.asarray(y, np.int32)),
                  options=dict(progress=False, allocation="uniform", calib_batch_size=128, **opts), seed=seed)
        logits = np.asarray(jax.jit(r.model.apply)(r.variables, jnp.asarray(t)))
        out["ways"][way] = {"logits_relative_error": relative_error(logits, dense),
                            "macs_ratio": round(float(r.macs_ratio), 4),
                            "not_refit": list(r.outcome.info.get("not_refit", [])),
                            "seconds": round(time.perf_counter() - t0, 1)}
    return out
