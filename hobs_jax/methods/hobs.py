"""``hobs``: Hessian-based structured Optimal Brain Surgeon for channel groups (H-OBS), and
``hobs_nohessian``, its ablation without second-order information.

H-OBS, in six phases (times reported in ``info['timings']``):

1. **calibration** - one streamed pass over the calibration images accumulates the
   layer Hessian ``H = (2/n) X^T X`` of every layer that consumes a prunable group
   (:func:`hobs_jax.stats.collect_hessians`).
2. **inverses** - each H is dampened (``damp * mean(diag H)``, dead inputs' diagonal
   set to 1) and inverted by Cholesky, with geometric re-dampening when singular
   (:func:`obs_math.robust_inverse`).
3. **selection** - per group, channels are removed greedily (``channels_per_step`` at a
   time): the saliency of channel c sums over every consumer layer l that reads it,
   ``rho_c = 1/2 sum_l sum_j c_lj W_lQj^T [(H_l^-1)_QQ]^-1 W_lQj`` with Q the rows of c in
   l; after each removal every consumer's weights are compensated and its inverse
   Hessian downdated (Schur complement), so later saliencies see earlier removals.
   ``c_lj = gamma_j^2 / (var_j + eps)`` when a BatchNorm normalizes layer l's output j
   (``bn_weighted``): errors are measured where the next layer sees them, which makes
   saliencies of different layers comparable. Producers' slices simply disappear;
   depthwise convs pass channels through (see :mod:`obs_groups`).
4. **allocation** - ``uniform``: one keep ratio (``allocation.uniform``), the greedy
   path runs to that count. ``global``: the greedy path runs to the floor
   (``min_ratio``); the k-th removed channel of a group gets the *running maximum* of the
   path's marginal losses up to k (a monotone "cost of pruning this group to size - k"),
   normalized per unit of MACs/params one channel of the group costs
   (``allocation.normalize(..., 'cost')``); one threshold over all groups
   (``allocation.global_threshold``) picks the kept counts, each group keeping the
   channels its path removes last.
5. **compensation** - every consumer is refit on its kept rows: ``W'_K = (H_KK)^-1 H_K,: W``
   with the dampened H (= the composed OBS updates of the greedy path), or with the
   undampened H (``refit=True``: plain least squares ``min ||X W - X_K W'||``).

6. **propagation** (``propagate`` sweeps, default 1) - phase 5 fits each consumer to the
   dense network's output *from the dense network's input*, which the pruned network no
   longer provides once upstream layers are cut. In forward order, every conv/dense
   layer is refit from the pruned network's own input (upstream already refit) to the
   dense layer's output: ``W'_K = (P_K^T P_K + lambda)^{-1} P_K^T Y`` (P: the pruned
   network's input, Y = D W the dense layer's output, on ``propagate_images`` calibration
   images; :mod:`hobs_jax.stats.cross`), so errors no longer compound with depth (ablation
   rows ``hobs@propagate=0`` in docs/results/oneshot_fmnist.md). All layers of a sweep are
   refit during ONE forward pass of the pruned network (:mod:`hobs_jax.methods.hobs_refit`).

BatchNorm statistics are NOT re-estimated here: ``PruneOutcome.variables`` are
full-size, and re-estimation needs the pruned network, so it is the caller's step, the
same for every method (the pipeline's prune stage does it when ``prune.bn_recalibrate``;
experiments call ``hobs_jax.stats.reestimate_bn`` on ``PruneResult.model/variables``).

References: Hassibi & Stork (NIPS 1993); OBC (Frantar & Alistarh, NeurIPS 2022);
SparseGPT dampening (Frantar & Alistarh, ICML 2023); OSSCAR (Meng et al., 2024);
ZipLM / oBERT structured OBS (Kurtic et al.). Math and conventions: docs/hobs.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Mapping

import jax
import ml_collections
import numpy as np

from hobs_jax import allocation
from hobs_jax.graph import group_l2_scores, plan_from_scores
from hobs_jax.methods.base import PruneOutcome, PruneTask
from hobs_jax.methods.hobs_refit import refit_sequential
from hobs_jax.methods.obs_groups import GroupRole, group_roles
from hobs_jax.methods.obs_math import (Consumer, blas_threads, channel_rows, compensate, greedy_path,
                                       robust_inverse)
from hobs_jax.methods.registry import register
from hobs_jax.stats.hessian import DTYPES, HessianStats, check_images, collect_hessians, dampen
from hobs_jax.stats.layers import LayerInfo, kernel_matrix, trace_layers

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global")
NORMALIZE = ("none", "mean", "max", "cost")


def default_config() -> ml_collections.ConfigDict:
    """H-OBS options.

    damp: relative dampening lambda (H + lambda mean(diag H) I); channels_per_step:
    channels removed per greedy step; refit: final least-squares refit on the
    undampened H (else the OBS compensation with the dampened H); allocation:
    'uniform' | 'global'; normalize: cross-group saliency normalization for 'global'
    ('cost' = per MAC/param a channel costs); min_ratio: per-group floor for 'global';
    dtype: Hessian accumulation 'float32' | 'float64'; calib_batch_size: images per
    calibration step; bn_weighted: measure consumer errors after their BatchNorm;
    max_damp_retries: re-dampening attempts for singular Hessians; blas_threads:
    OpenBLAS threads for the host linear algebra (0 = library default; 1 is fastest on
    a shared 2-core machine, see ``obs_math.blas_threads``); progress: bars.
    propagate: passes of the sequential refit (0 = off): every conv/dense layer is refit
    to the dense network's outputs from the pruned network's own inputs
    (:func:`_propagate`); propagate_damp: its relative ridge; propagate_images: the
    calibration images it uses (one forward pass of them per sweep).
    """
    return ml_collections.ConfigDict(dict(
        damp=0.01, channels_per_step=1, refit=False, allocation="global", normalize="cost",
        min_ratio=0.1, dtype="float32", calib_batch_size=256, bn_weighted=True, relative=False,
        propagate=1, propagate_damp=1e-3, propagate_images=512, max_damp_retries=6, blas_threads=1, progress=True))


def default_config_nohessian() -> ml_collections.ConfigDict:
    """Same allocation options as ``hobs`` (see :func:`default_config`)."""
    return ml_collections.ConfigDict(dict(allocation="global", normalize="cost", min_ratio=0.1))


def _check_options(o) -> None:
    if o.allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={o.allocation!r}: use one of {ALLOCATIONS}")
    if o.normalize not in NORMALIZE:
        raise ValueError(f"normalize={o.normalize!r}: use one of {NORMALIZE}")
    if not 0.0 <= float(o.min_ratio) < 1.0:
        raise ValueError(f"min_ratio={o.min_ratio!r} must be in [0, 1)")
    if "damp" in o:
        if not float(o.damp) >= 0:
            raise ValueError(f"damp={o.damp!r} must be >= 0")
        if int(o.channels_per_step) < 1:
            raise ValueError(f"channels_per_step={o.channels_per_step!r} must be >= 1")
        if o.dtype not in DTYPES:
            raise ValueError(f"dtype={o.dtype!r}: use one of {DTYPES}")
        if int(o.calib_batch_size) < 1:
            raise ValueError(f"calib_batch_size={o.calib_batch_size!r} must be >= 1")
        if int(o.propagate) < 0 or not float(o.propagate_damp) >= 0:
            raise ValueError(f"propagate={o.propagate!r} and propagate_damp={o.propagate_damp!r} "
                             f"must be >= 0")


def _check_target(task: PruneTask) -> None:
    if task.metric not in ("macs", "params"):
        raise ValueError(f"metric={task.metric!r}: use 'macs' or 'params'")
    t = task.target
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise ValueError(f"target={t!r}: the kept fraction of the {task.metric} must be in (0, 1)")


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def _flat(variables) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _layer_weights(flat, info: LayerInfo, with_bias: bool) -> np.ndarray:
    """[d (+1), m] float64 kernel matrix (+ bias row) of a consumer layer."""
    w = kernel_matrix(info, flat[("params",) + info.path + ("kernel",)]).astype(np.float64)
    if with_bias:
        b = np.asarray(flat[("params",) + info.path + ("bias",)], np.float64).reshape(1, -1)
        w = np.concatenate([w, b], axis=0)
    return w


def _col_weights(flat, info: LayerInfo, opts=None, w=None, h=None) -> np.ndarray | None:
    """Per-output weights c_j: gamma^2 / (var + eps) of the BatchNorm right after ``info``
    (``bn_weighted``), divided by the layer's output energy 1/2 sum_j c_j w_j^T H w_j
    (``relative``: losses become relative reconstruction errors)."""
    c = _bn_weights(flat, info) if (opts is None or opts.bn_weighted) else None
    if opts is not None and opts.relative:
        cw = np.ones(w.shape[1]) if c is None else c
        energy = 0.5 * float(np.sum(cw * w * (h @ w)))
        c = cw / max(energy, 1e-30)
    return c


def _bn_weights(flat, info: LayerInfo) -> np.ndarray | None:
    if info.bn is None:
        return None
    var = flat.get(("batch_stats",) + info.bn + ("var",))
    scale = flat.get(("params",) + info.bn + ("scale",))
    if var is None:
        return None
    var = np.asarray(var, np.float64)
    g2 = np.ones_like(var) if scale is None else np.asarray(scale, np.float64) ** 2
    return g2 / (var + info.bn_eps)


class _Solved:
    """Per layer: the undampened H (bias-augmented when the layer has a bias), the
    dampened inverse, the dampening used and the dead-input mask."""

    def __init__(self, stats: HessianStats, opts, timer: _Timer):
        self.stats, self.opts, self.timer = stats, opts, timer
        self.cache: dict[tuple[str, ...], tuple] = {}
        self.raised: dict[str, float] = {}

    def __call__(self, info: LayerInfo):
        if info.path not in self.cache:
            with self.timer("inverses"):
                h = self.stats[info.path].hessian(bias=info.use_bias)
                hd, hinv, lam, dead = robust_inverse(h, float(self.opts.damp),
                                                     max_retries=int(self.opts.max_damp_retries),
                                                     name=info.name)
                if lam != float(self.opts.damp):
                    self.raised[info.name] = lam
                self.cache[info.path] = (h, hd, hinv, dead)
        return self.cache[info.path]


def _select(role: GroupRole, n_remove: int, flat, solved: _Solved, opts) -> tuple[np.ndarray, np.ndarray, str]:
    """(removal order, marginal losses, how) for one group."""
    size = role.group.size
    if n_remove <= 0:
        return np.zeros(0, np.int64), np.zeros(0), "none"
    if role.consumers:
        cons = _consumers(role, flat, solved, opts)
        if not role.compensate:  # independent no-compensation losses: one sort
            s = sum(c.saliency(np.ones(size, bool)) for c in cons)
            order = np.argsort(s, kind="stable")[:n_remove]
            return order, s[order], "obs_nocomp"
        order, losses = greedy_path(cons, n_remove, int(opts.channels_per_step))
        return order, losses, "obs"
    if role.producers:
        energy = np.zeros(size)
        for site in role.producers:
            info = site.layer
            h, _, _, _ = solved(info)
            w = _layer_weights(flat, info, info.use_bias)
            for c, cols in enumerate(channel_rows(site.channel, size, info.name)):
                wc = w[:, cols]
                energy[c] += 0.5 * float(np.sum(wc * (h @ wc)))
        order = np.argsort(energy, kind="stable")[:n_remove]
        return order, energy[order], "energy"
    raise ValueError(f"group {role.group.id} has neither consumers nor producers with statistics")


def _consumers(role: GroupRole, flat, solved: _Solved, opts) -> list[Consumer]:
    """Fresh working states (weights with dead rows zeroed, a copy of H^-1) of the
    group's consumers."""
    out = []
    for site in role.consumers:
        info = site.layer
        _, hd, hinv, dead = solved(info)
        w = _layer_weights(flat, info, info.use_bias)
        w[dead] = 0.0
        rows = channel_rows(site.channel, role.group.size, info.name)
        colw = _col_weights(flat, info, opts, w, hd)
        if role.compensate:
            out.append(Consumer(info.name, w, hinv.copy(), rows, colw))
        else:
            out.append(Consumer(info.name, w, hinv, rows, colw, compensate=False, h=hd))
    return out


def path_scores(size: int, order: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """[size] global-allocation scores: the k-th removed channel gets max(losses[:k+1])
    (monotone along the path); channels the path never removed get +inf."""
    s = np.full(size, np.inf)
    if len(order):
        s[order] = np.maximum.accumulate(np.asarray(losses, np.float64))
    return s


def rank_scores(size: int, order: np.ndarray) -> np.ndarray:
    """[size] plan scores: removal rank (first removed lowest), never-removed highest."""
    s = np.full(size, float(size), np.float64)
    s[order] = np.arange(len(order), dtype=np.float64)
    return s


def _normalized(cost, scores: Mapping[int, np.ndarray], how: str, metric: str) -> dict[int, np.ndarray]:
    """allocation.normalize on finite stand-ins (inf -> the group's largest finite score),
    infinities restored afterwards."""
    finite = {}
    for g, s in scores.items():
        s = np.asarray(s, np.float64)
        top = s[np.isfinite(s)].max() if np.isfinite(s).any() else 1.0
        finite[g] = np.where(np.isfinite(s), s, top)
    normed = allocation.normalize(finite, cost, how, metric)
    return {g: np.where(np.isfinite(scores[g]), normed[g], np.inf) for g in scores}


def _set_leaf(tree, path: tuple[str, ...], value) -> None:
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _copy_tree(variables):
    def copy(node):
        if isinstance(node, Mapping):
            return {k: copy(v) for k, v in node.items()}
        return np.array(node)
    return copy(variables)


def _removed_by_layer(roles: Mapping[int, GroupRole], removed: Mapping[int, np.ndarray]) -> dict:
    """{layer path: [info, [removed input rows, ...], every group compensable]}."""
    by_layer: dict[tuple[str, ...], list] = {}
    for gid, role in roles.items():
        rem = removed.get(gid)
        if rem is None or not len(rem):
            continue
        for site in role.consumers:
            rows = channel_rows(site.channel, role.group.size, site.layer.name)[rem].reshape(-1)
            by_layer.setdefault(site.layer.path, [site.layer, [], True])
            entry = by_layer[site.layer.path]
            entry[1].append(rows)
            entry[2] = entry[2] and role.compensate
    return by_layer


def _compensate_all(task: PruneTask, roles: Mapping[int, GroupRole], removed: Mapping[int, np.ndarray],
                    flat, solved: _Solved, opts) -> dict:
    """Full-size variables with every consumer refit on its kept rows (see module doc)."""
    out = _copy_tree(task.variables)
    by_layer = _removed_by_layer(roles, removed)
    for path, (info, rows, ok) in by_layer.items():
        if not ok:
            continue  # LayerNorm-normalized group: rows are just sliced away
        h, hd, _, _ = solved(info)
        hc = dampen(h, 1e-8)[0] if opts.refit else hd
        w = _layer_weights(flat, info, info.use_bias)
        new = compensate(w, hc, np.unique(np.concatenate(rows)), name=info.name)
        kshape = info.kernel_shape
        kernel = new[:info.d_in].reshape(kshape)
        dt = np.asarray(flat[("params",) + path + ("kernel",)]).dtype
        _set_leaf(out, ("params",) + path + ("kernel",), kernel.astype(dt))
        if info.use_bias:
            _set_leaf(out, ("params",) + path + ("bias",), new[info.d_in].astype(dt))
    return out


def _propagate(task: PruneTask, infos, roles, removed, variables, images, opts) -> dict:
    """Sequential refit (``propagate`` sweeps, module doc phase 6) of every channel-mixing
    conv/dense layer, except those whose rows belong to a group that cannot be compensated
    (LayerNorm): :func:`hobs_jax.methods.hobs_refit.refit_sequential`, one forward pass of
    ``propagate_images`` calibration images per sweep."""
    by_layer = _removed_by_layer(roles, removed)
    layers = [i for p, i in infos.items() if i.kind in ("conv", "dense") and (p not in by_layer or by_layer[p][2])]
    rem = {p: np.unique(np.concatenate(by_layer[p][1])) for p in by_layer}
    return refit_sequential(task.model, task.variables, variables, layers, rem,
                            images[:max(1, int(opts.propagate_images))], sweeps=int(opts.propagate),
                            damp=float(opts.propagate_damp), batch_size=int(opts.calib_batch_size))


def _keep_counts(task: PruneTask, opts) -> tuple[np.ndarray | None, np.ndarray]:
    """(uniform kept counts or None, how many channels each group's path must remove)."""
    cost = task.cost
    if opts.allocation == "uniform":
        keep = allocation.uniform(cost, task.target, task.metric, round_to=task.round_to)
        return keep, (cost.sizes - keep).astype(int)
    floor = allocation.floors(cost, float(opts.min_ratio), task.round_to)
    allocation.check_reachable(cost, task.target, task.metric, floor)
    return None, (cost.sizes - floor).astype(int)


def _unreachable_detail(task: PruneTask) -> str:
    fixed = [g for g in task.graph.groups if not g.prunable]
    return ", ".join(f"{g.id} ({g.reason or 'pinned'})" for g in fixed[:4])


@dataclasses.dataclass(frozen=True)
class Selection:
    """What H-OBS knows after its selection phase, handed to an external allocator
    (``prune(task, allocate=...)``; R-SPAR uses it).

    Attributes:
      task: the task; ``opts`` its options; ``images`` the Hessian calibration images.
      roles: group id -> :class:`GroupRole`; ``flat`` the variables by path tuple;
      solved: per-layer (H, H_damped, H_damped^-1, dead) cache (call it with a LayerInfo).
      paths: group id -> (removal order [n], marginal OBS losses [n]) down to the floor.
      floor: [G] the smallest kept counts the paths reach (``min_ratio``).
      how: group id -> how its saliency was computed; ``timer`` phase timings.
    """

    task: PruneTask
    opts: ml_collections.ConfigDict
    images: np.ndarray
    roles: Mapping[int, GroupRole]
    flat: Mapping
    solved: "_Solved"
    paths: Mapping[int, tuple[np.ndarray, np.ndarray]]
    floor: np.ndarray
    how: Mapping[int, str]
    timer: "_Timer"

    def global_keep(self, target: float | None = None, budget=None) -> np.ndarray:
        """[G] the kept counts of H-OBS's own global allocation (see module doc, phase 4)
        at ``target`` (default: the task's); ``budget``: another cost with the
        ``ratio(keep, metric)`` / ``sizes`` interface to meet the target in (R-SPAR's
        latency budget; saliencies stay normalized per MAC/param)."""
        cost, task = self.task.cost, self.task
        raw = {g: path_scores(self.roles[g].group.size, *self.paths[g]) for g in cost.group_ids}
        normed = _normalized(cost, raw, self.opts.normalize, task.metric)
        return allocation.global_threshold(budget or cost, normed, task.target if target is None else target,
                                           task.metric,
                                           round_to=task.round_to, min_ratio=float(self.opts.min_ratio))


@register("hobs", default_config=default_config, needs_data=True,
          summary="structured OBS: layer Hessians, greedy channel removal with compensation, "
                  "uniform/global allocation")
def prune(task: PruneTask, *, allocate=None) -> PruneOutcome:
    """H-OBS (module doc). ``allocate``: optional ``Selection -> (keep [G], info dict)``
    replacing phase 4 (the paths then run to the ``min_ratio`` floor, as for 'global')."""
    opts = task.options
    _check_options(opts)
    _check_target(task)
    try:
        keep_uniform, n_remove = _keep_counts(task, opts)
        if allocate is not None:  # an external allocator needs the paths down to the floor
            keep_uniform, n_remove = None, _keep_counts(task, _with(opts, allocation="global"))[1]
    except ValueError as e:
        raise ValueError(f"{e}; groups that cannot be pruned: {_unreachable_detail(task)}") from None
    sel = _selection(task, n_remove)
    extra = {}
    if allocate is not None:
        with blas_threads(int(opts.blas_threads) or None):
            keep, extra = allocate(sel)
    elif keep_uniform is not None:
        keep = keep_uniform
    else:
        keep = sel.global_keep()
    return finish(sel, keep, extra)


def select(task: PruneTask) -> Selection:
    """Phases 1-3 of H-OBS alone, the greedy paths running down to the ``min_ratio``
    floor: one selection serves any number of allocations (:func:`finish`), e.g. every
    target and allocation of an experiment on one model (the paths do not depend on the
    target: a path to a higher count is a prefix of the path to a lower one)."""
    opts = task.options
    _check_options(opts)
    floor = allocation.floors(task.cost, float(opts.min_ratio), task.round_to)
    return _selection(task, (task.cost.sizes - floor).astype(int))


def _selection(task: PruneTask, n_remove) -> Selection:
    """Calibration, inverses and greedy selection (phases 1-3)."""
    opts = task.options
    if task.calib is None:
        raise ValueError("hobs needs calibration data (task.calib is None)")
    images = check_images(task.calib.images, task.input_shape)
    timer = _Timer()
    infos = trace_layers(task.model, task.variables, task.input_shape)
    roles = {gid: r for gid, r in group_roles(task.graph, infos).items() if gid in task.cost.group_ids}
    need = {}
    for r in roles.values():
        for site in (r.consumers or r.producers):
            need[site.layer.path] = True
    with timer("calibration"):
        stats = collect_hessians(task.model, task.variables, images, paths=list(need),
                                 batch_size=int(opts.calib_batch_size), dtype=opts.dtype,
                                 progress=bool(opts.progress), infos=infos)
    flat = _flat(task.variables)
    solved = _Solved(stats, opts, timer)
    paths, how = {}, {}
    from hobs_jax.train import progress as bar
    with blas_threads(int(opts.blas_threads) or None):
        for i, gid in enumerate(bar(task.cost.group_ids, desc="H-OBS selection", unit="group",
                                    enabled=bool(opts.progress))):
            role = roles[gid]
            for site in role.consumers or role.producers:
                solved(site.layer)  # inverses first, so their time is not counted as selection
            with timer("selection"):
                order, losses, kind = _select(role, int(n_remove[i]), flat, solved, opts)
            paths[gid], how[gid] = (order, losses), kind
    floor = (task.cost.sizes - np.asarray(n_remove)).astype(np.float64)
    return Selection(task, opts, images, roles, flat, solved, paths, floor, how, timer)


def _with(opts, **kw):
    o = ml_collections.ConfigDict(opts.to_dict())
    o.update(kw)
    return o


def finish(sel: Selection, keep, extra: Mapping | None = None) -> PruneOutcome:
    """Phase 5 for kept counts ``keep`` [G] (>= the selection's floor): the plan keeps the
    channels each group's path removes last, every consumer is refit on its kept rows."""
    task, opts, roles, paths, timer = sel.task, sel.opts, sel.roles, sel.paths, sel.timer
    cost = task.cost
    keep = np.asarray(keep, np.float64)
    if np.any(keep < sel.floor):
        g = int(np.flatnonzero(keep < sel.floor)[0])
        raise ValueError(f"group {cost.group_ids[g]} keeps {int(keep[g])}, below the floor "
                         f"{int(sel.floor[g])} its removal path reached")
    keep_map = {g: int(k) for g, k in zip(cost.group_ids, keep)}
    ranks = {g: rank_scores(roles[g].group.size, paths[g][0]) for g in cost.group_ids}
    plan = plan_from_scores(task.graph, ranks, keep_map, round_to=task.round_to)
    removed = {}
    for g, size in zip(cost.group_ids, cost.sizes):
        kept = plan.kept(g)
        if kept is not None:
            removed[g] = np.setdiff1d(np.arange(int(size)), np.asarray(kept))
    with blas_threads(int(opts.blas_threads) or None), timer("compensation"):
        variables = _compensate_all(task, roles, removed, sel.flat, sel.solved, opts)
    if int(opts.propagate) > 0:
        with blas_threads(int(opts.blas_threads) or None), timer("propagation"):
            infos = trace_layers(task.model, task.variables, task.input_shape)
            variables = _propagate(task, infos, roles, removed, variables, sel.images, opts)
    info = {
        "keep": {str(g): k for g, k in keep_map.items()},
        "timings": {k: round(v, 4) for k, v in timer.times.items()},
        "calibration_images": int(len(sel.images)),
        "saliency": {str(g): sel.how[g] for g in cost.group_ids},
        "path_loss": {str(g): float(np.sum(paths[g][1][:int(s) - keep_map[g]]))
                      for g, s in zip(cost.group_ids, cost.sizes)},
        "damping_raised": dict(sel.solved.raised),
        "notes": {str(g): roles[g].note for g in cost.group_ids if roles[g].note},
        "bn_reestimate": "caller (hobs_jax.stats.reestimate_bn on the pruned network)",
    }
    info.update(extra or {})
    return PruneOutcome(plan, variables, info)


@register("hobs_nohessian", default_config=default_config_nohessian, needs_data=False,
          summary="H-OBS ablation: group L2^2 saliency (H = I), same allocation, no compensation")
def prune_nohessian(task: PruneTask) -> PruneOutcome:
    """The "w/o Hessian" ablation: saliency 1/2 ||group slices||^2 (group L2 norm squared,
    i.e. the OBS loss with H = I summed over members), the same uniform/global allocation
    and normalization as ``hobs``, and no compensation (with H = I there is none)."""
    opts = task.options
    _check_options(opts)
    _check_target(task)
    cost = task.cost
    scores = {g: 0.5 * s ** 2 for g, s in group_l2_scores(task.graph, task.variables).items()}
    try:
        if opts.allocation == "uniform":
            keep = allocation.uniform(cost, task.target, task.metric, round_to=task.round_to)
        else:
            sub = {g: scores[g] for g in cost.group_ids}
            normed = allocation.normalize(sub, cost, opts.normalize, task.metric)
            keep = allocation.global_threshold(cost, normed, task.target, task.metric,
                                               round_to=task.round_to, min_ratio=float(opts.min_ratio))
    except ValueError as e:
        raise ValueError(f"{e}; groups that cannot be pruned: {_unreachable_detail(task)}") from None
    keep_map = {g: int(k) for g, k in zip(cost.group_ids, keep)}
    plan = plan_from_scores(task.graph, scores, keep_map, round_to=task.round_to)
    return PruneOutcome(plan, task.variables, {"keep": {str(g): k for g, k in keep_map.items()}})
