"""R-SPAR as an allocator (:class:`hobs_jax.methods.parts.Allocator`): per-group kept
counts learned by a DDPG agent under a MACs, params or measured-latency budget (the task's
own latency table when ``metric='latency'``, or this allocator's ``latency_lut``), on the
task's aligned grid (multiples of ``task.round_to``).

Composed with any scorer and compensator (the method ``rspar`` is the ``obs`` scorer,
this allocator and the ``obs`` compensator; ``magnitude_rspar`` the ``l2`` scorer and no
compensation). The composition

1. holds out the last ``reward_images`` calibration images for this allocator (the
   other parts, e.g. the Hessians, see only the rest: :meth:`RsparAllocator.holdout`);
2. asks for the floor: every group at ``lbound`` (:meth:`RsparAllocator.floor`), so the
   scorer's removal orders reach every count the agent may choose;
3. calls :meth:`RsparAllocator.allocate` with the scored :class:`~hobs_jax.methods.Selection`:
   the fast reward is built on the held-out images from the compensator's per-count
   weight changes (:meth:`Selection.grid`, :mod:`hobs_jax.rspar.reward`), the environment
   from the budget and the groups' features, and the search runs (resumably under
   ``workdir``, default ``<task.workdir>/rspar``, in a subfolder named by what defines
   the search: :func:`search_key`); the ``rerank`` best distinct
   allocations and the uniform and global references are re-ranked on the non-held-out
   images (:mod:`hobs_jax.rspar.rerank`);
4. prunes and compensates at the winner's counts as usual.

``PruneOutcome.info['rspar']`` holds the chosen allocation next to the uniform and
global ones, their rewards, the learning curve and timings; the outcome's artifacts draw
the allocation chart and the learning curve (:mod:`hobs_jax.rspar.report`).

This package implements the allocator protocol structurally and imports nothing from
:mod:`hobs_jax.methods` (which knows it only by name).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Literal

import numpy as np

from hobs_jax import allocation
from hobs_jax.obs import blas_threads
from hobs_jax.options import Options
from hobs_jax.rspar.agent import AgentOptions
from hobs_jax.rspar.env import AllocationEnv, AsCost, MonomialBudget, check_lbound, kept_grid
from hobs_jax.rspar.features import group_features
from hobs_jax.rspar.rerank import Candidate, candidates, rerank
from hobs_jax.rspar.reward import build_grid_reward
from hobs_jax.rspar.search import search

BUDGETS = ("macs", "params", "latency")


@dataclasses.dataclass(frozen=True)
class RsparOptions(Options):
    """R-SPAR's options.

    episodes: search episodes (warm-up included); warmup: random episodes first;
    lbound: smallest keep ratio per group, in (0, 1] (the floor the scorer's orders
    reach); grid: most kept counts per group the reward precomputes (all admissible
    counts when fewer); budget: 'macs' | 'params' (the task's metric when empty) |
    'latency' (latency_lut, else the task's table of ``metric='latency'``);
    reward_images: held-out calibration images the reward
    is computed on (the other parts see only the rest); bn: reward-network BatchNorm,
    'batch' (statistics of the reward batch) or 'running'; cost_weight: reward = -CE -
    cost_weight * budget ratio; references: evaluate the uniform and global allocations
    first (demonstrations, best-so-far floor); normalize: the global reference's
    cross-group normalization (:func:`hobs_jax.allocation.global_keep`, at ``lbound``);
    workdir: search checkpoints (resume; empty: ``<task.workdir>/rspar`` when the task has
    a workdir, else none); checkpoint_every: episodes between checkpoints; rerank:
    re-rank the best ``rerank`` distinct allocations of the search (by reward) together
    with the references (when ``references``) on the non-held-out calibration images and
    return the winner (0: return the search's best as is; :mod:`hobs_jax.rspar.rerank`);
    rerank_metric: 'loss' (cross-entropy) or 'acc' (top-1, ties broken by the loss);
    rerank_images: how many non-held-out images (the first ones) the re-rank uses, 0 =
    all; agent: DDPG options (:class:`hobs_jax.rspar.agent.AgentOptions`); progress: bars;
    blas_threads: OpenBLAS threads while the reward is precomputed and the search runs.

    Why lbound 0.1 (AMC: 0.2) and rerank 10 (was 5): H-OBS's global allocation of the
    Fashion-MNIST ResNet-56 keeps 10 of 64 channels in one group at 3x, outside a 0.2
    floor, and with the larger space more candidates are worth a look on the Hessian
    images; chosen on search-internal evidence (Hessian-split loss), docs/rspar.md.
    """

    episodes: int = 300
    warmup: int = 50
    lbound: float = 0.1
    grid: int = 64
    budget: Literal["", "macs", "params", "latency"] = ""
    reward_images: int = 256
    bn: Literal["batch", "running"] = "batch"
    cost_weight: float = 0.0
    references: bool = True
    normalize: Literal["none", "mean", "max", "cost"] = "cost"
    workdir: str = ""
    checkpoint_every: int = 25
    latency_lut: str = ""
    rerank: int = 10
    rerank_metric: Literal["loss", "acc"] = "loss"
    rerank_images: int = 0
    agent: AgentOptions = dataclasses.field(default_factory=AgentOptions)
    progress: bool = True
    blas_threads: int = 1

    def check(self):
        try:
            check_lbound(self.lbound)
        except ValueError as e:
            raise ValueError(f"{self._prefix()}{e}") from None
        self.require(self.episodes >= 1, "episodes", "must be >= 1")
        self.require(0 <= self.warmup <= self.episodes, "warmup", f"must be in [0, episodes={self.episodes}]")
        self.require(self.grid >= 2, "grid", "must be >= 2 kept counts per group")
        self.require(self.reward_images >= 1, "reward_images", "must be >= 1")
        self.require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        self.require(self.rerank >= 0, "rerank", "must be >= 0")
        self.require(self.rerank_images >= 0, "rerank_images", "must be >= 0 (0: all)")
        self.require(self.blas_threads >= 0, "blas_threads", "must be >= 0 (0: the library's default)")

    @classmethod
    def smoke(cls) -> dict:
        """A handful of episodes on a coarse grid, no re-rank: the contract, not the search quality."""
        return {"episodes": 4, "warmup": 2, "reward_images": 8, "grid": 8, "rerank": 0, "progress": False,
                "agent": {"hidden": 16}}


def make_budget(kind: str, task, o: RsparOptions):
    """The budget R-SPAR allocates under: the exact MACs/params cost model or the
    measured latency table (:mod:`hobs_jax.rspar.latency`, checked against the task)."""
    if kind == "latency":
        from hobs_jax.allocation.latency import LatencyBudget

        if o.latency_lut:
            return LatencyBudget.from_file(o.latency_lut, task)
        if task.latency is None:
            raise ValueError("rspar: budget='latency' needs latency_lut (a table from benchmarks/latency_lut.py) "
                             "or a task with metric='latency'")
        return task.latency
    return MonomialBudget(task.cost, kind)


class RsparAllocator:
    """The allocator protocol over R-SPAR's search (module doc)."""

    name = "rspar"
    Options = RsparOptions
    needs_data = True
    needs_grid = True  # the reward is built from the compensator's per-count changes

    def check(self, task, o: RsparOptions) -> None:
        if (o.budget or task.metric) == "latency" and not o.latency_lut and task.latency is None:
            raise ValueError("rspar: budget='latency' needs latency_lut (a table from benchmarks/latency_lut.py) "
                             "or a task with metric='latency'")
        if task.metric == "latency" and (o.budget not in ("", "latency") or o.latency_lut):
            raise ValueError("rspar: the task's metric='latency' brings its own table; leave budget and latency_lut "
                             "empty")
        n = len(task.calib.images)
        if not o.reward_images < n:
            raise ValueError(f"rspar: reward_images={o.reward_images!r} must be in [1, {n}) (the calibration set "
                             f"has {n} images; the rest feed the other parts)")
        if o.rerank_images > n - o.reward_images:
            raise ValueError(f"rspar: rerank_images={o.rerank_images!r} exceeds the {n - o.reward_images} "
                             "non-held-out images (0 = all of them)")

    def holdout(self, task, o: RsparOptions) -> int:
        return int(o.reward_images)

    def _budget(self, sel, o: RsparOptions):
        kind = o.budget or sel.task.metric
        return sel.shared(("rspar_budget", kind, o.latency_lut), lambda: make_budget(kind, sel.task, o))

    def floor(self, sel, o: RsparOptions) -> np.ndarray:
        task = sel.task
        budget = self._budget(sel, o)
        floor = allocation.floors(sel.cost, float(o.lbound), task.round_to)
        if budget.ratio(floor) > task.target * (1 + allocation.TOLERANCE):
            raise allocation.Unreachable(f"target {task.target:.4f} of the {budget.kind} is unreachable: every "
                                         f"prunable group at lbound={o.lbound} still keeps {budget.ratio(floor):.4f}")
        if task.metric != "latency":
            allocation.check_reachable(sel.cost, task.target, task.metric, floor)
        return floor

    def allocate(self, sel, o: RsparOptions):
        task = sel.task
        budget = self._budget(sel, o)
        base = o.workdir or (os.path.join(task.workdir, "rspar") if task.workdir else "")
        workdir = os.path.join(base, search_key(sel, o, budget.kind)) if base else ""
        with blas_threads(int(o.blas_threads) or None):
            keep, info = search_allocation(sel, task.target, budget=budget,
                                           options=dataclasses.replace(o, workdir=workdir),
                                           seed=int(task.seed), reward_images=sel.holdout.images,
                                           reward_labels=sel.holdout.labels)
        r = info["rspar"]
        declared = None if budget.kind == task.metric else (budget.kind, float(r["budget_ratio"]))
        return allocation.Allocation(keep, r, budget=declared, artifacts=artifacts(r, task.target))


def search_key(sel, o: RsparOptions, budget_kind: str) -> str:
    """The folder name of a search's checkpoints: a digest of what the search depends on
    (target, budget, seed, alignment, group sizes and floors, every option but where and
    how verbosely it runs). A search resumes only its own checkpoints: the measured latency
    loop (:mod:`hobs_jax.methods.measured`) runs one search per fraction it asks, and a
    rerun with another target must not resume a finished search made for the first."""
    import hashlib
    import json

    task = sel.task
    opts = {k: v for k, v in dataclasses.asdict(o).items()
            if k not in ("workdir", "progress", "blas_threads", "checkpoint_every")}
    tag = json.dumps({"target": round(float(task.target), 9), "budget": budget_kind, "seed": int(task.seed),
                      "round_to": int(task.round_to), "sizes": [int(x) for x in sel.cost.sizes],
                      "floor": [int(x) for x in np.asarray(sel.floor)], "options": opts},
                     sort_keys=True, default=repr)
    return "search-" + hashlib.sha256(tag.encode()).hexdigest()[:12]


def artifacts(r: dict, target: float) -> dict:
    """Writers of R-SPAR's allocation chart and learning curve (``PruneOutcome.artifacts``)."""
    from hobs_jax.rspar.report import allocation_record, save_allocation, save_learning_curve

    def chart(prefix: str):
        return save_allocation(prefix, allocation_record(r["group_ids"], r["sizes"], r["allocations"],
                                                         target=target, budget=r["budget"]))

    def curve(prefix: str):
        return save_learning_curve(prefix, {"rspar": r["curve"]})

    return {"rspar_allocation": chart, "rspar_curve": curve}


def search_allocation(sel, target: float, *, budget, options: RsparOptions, seed: int,
                      reward_images: np.ndarray, reward_labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """R-SPAR on a scored :class:`~hobs_jax.methods.Selection`: (kept counts [G], info) at
    ``target`` of ``budget``.

    The grids start at the larger of the selection's floor and ``lbound``; the reward uses
    ``reward_images`` [N, H, W, C] / ``reward_labels`` [N] (held out from the other
    parts); the re-rank (``options.rerank`` > 0) uses the selection's calibration images
    and labels (``sel.task.calib``)."""
    o = options
    task = sel.task
    cost = sel.cost
    lbound = float(o.lbound)
    t0 = time.perf_counter()
    lb = allocation.floors(cost, lbound, task.round_to)
    grids = [kept_grid(int(s), int(max(f, l)), task.round_to, int(o.grid))
             for s, f, l in zip(cost.sizes, sel.floor, lb)]
    reward = build_grid_reward(sel, grids, reward_images, reward_labels, bn=o.bn)
    env = AllocationEnv(budget, target, cost.sizes, grids, group_features(sel), lbound=lbound,
                        round_to=task.round_to)
    refs = {}
    if o.references:  # met in the search's own budget (MACs, params or the latency table)
        as_cost = AsCost(budget).cost_model()
        refs["uniform"] = allocation.uniform(as_cost, target, budget.kind, round_to=task.round_to)
        # met in the search's budget too (a latency table: ``budget.kind`` 'latency' meets the
        # threshold in ``as_cost``); the saliencies are still normalized per MAC
        refs["global"] = allocation.global_keep(cost, sel.scores.threshold, target, budget.kind,
                                                normalize=o.normalize, min_ratio=lbound, round_to=task.round_to,
                                                budget=as_cost)
    t1 = time.perf_counter()
    res = search(env, reward, episodes=int(o.episodes), warmup=int(o.warmup), seed=int(seed),
                 agent_config=o.agent, references=refs, cost_weight=float(o.cost_weight),
                 workdir=o.workdir or None, checkpoint_every=int(o.checkpoint_every),
                 keep_top=int(o.rerank), progress=bool(o.progress))
    traces = reward.traces
    keep = np.asarray(res.best_keep)
    chosen, reranked = res.best_source, None
    images = np.asarray(task.calib.images)
    if int(o.rerank) > 0:
        # A reference off the search grid (below lbound) was judged at its snapped counts
        # during the search: its search reward is not its own.
        on_grid = {k: v["reward"] for k, v in res.references.items()
                   if np.array_equal([g[i] for g, i in zip(env.grids, env.snap(np.asarray(v["keep"])))],
                                     np.asarray(v["keep"], np.float64))}
        cands = candidates(res.top, refs, on_grid)
        if not cands:  # no agent episode (cannot happen with episodes >= 1) and no references
            cands = [Candidate(res.best_source, tuple(int(k) for k in keep), res.best_reward)]
        n = int(o.rerank_images) or len(images)
        labels = np.asarray(task.calib.labels)
        best, reranked = rerank(sel, cands, images[:n], labels[:n], metric=o.rerank_metric,
                                budget=budget, bn=o.bn, cost_weight=float(o.cost_weight))
        keep, chosen = np.asarray(cands[best].keep), cands[best].name
    info = {"rspar": {
        "budget": budget.kind, "budget_ratio": budget.ratio(keep), "lbound": lbound,
        "allocations": {"rspar": keep.tolist(), "search_best": np.asarray(res.best_keep).tolist(),
                        **{k: np.asarray(v).tolist() for k, v in refs.items()}},
        "chosen": chosen, "rerank": reranked, "top": res.top,
        "group_ids": [int(g) for g in cost.group_ids], "sizes": cost.sizes.astype(int).tolist(),
        "best": {"reward": res.best_reward, "loss": res.best_loss, "acc": res.best_acc,
                 "source": res.best_source},
        "references": res.references, "curve": res.curve, "episodes": res.episodes,
        "grid_points": [len(g) for g in grids], "reward_traces": traces,
        "timings": {"precompute": t1 - t0, "search": res.seconds, "per_episode": res.seconds_per_episode,
                    "rerank": reranked["seconds"] if reranked else 0.0},
        "reward_images": int(len(reward_images)), "hessian_images": int(len(images)),
    }}
    return keep, info


ALLOCATOR = RsparAllocator()
