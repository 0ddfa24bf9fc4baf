"""``magnitude``: group L2 norm importance (Torch-Pruning's GroupMagnitudeImportance with
p=2, DepGraph Sec. 3.3 without sparse training), uniform or global allocation, no data,
no compensation. The baseline every other method must beat."""

from __future__ import annotations

import ml_collections

from hobs_jax import allocation
from hobs_jax.graph import group_l2_scores, plan_from_scores
from hobs_jax.methods.base import PruneOutcome, PruneTask
from hobs_jax.methods.registry import register


def default_config() -> ml_collections.ConfigDict:
    """allocation: 'uniform' | 'global'; normalize: how global scores compare across
    groups (see hobs_jax.allocation.normalize); min_ratio: floor per group (global)."""
    return ml_collections.ConfigDict(dict(allocation="uniform", normalize="mean", min_ratio=0.1))


def allocate(task: PruneTask, scores: dict, options) -> dict[int, int]:
    """Kept counts per group id from ``scores`` under the task's target (shared by the
    score-only methods)."""
    cost = task.cost
    if options.allocation == "uniform":
        keep = allocation.uniform(cost, task.target, task.metric, round_to=task.round_to)
    elif options.allocation == "global":
        normed = allocation.normalize(scores, cost, options.normalize, task.metric)
        keep = allocation.global_threshold(cost, normed, task.target, task.metric,
                                           round_to=task.round_to, min_ratio=options.min_ratio)
    else:
        raise ValueError(f"allocation={options.allocation!r}: use 'uniform' or 'global'")
    return {g: int(k) for g, k in zip(cost.group_ids, keep)}


@register("magnitude", default_config=default_config, needs_data=False,
          summary="group L2 norm, uniform/global allocation, no compensation")
def prune(task: PruneTask) -> PruneOutcome:
    scores = group_l2_scores(task.graph, task.variables)
    keep = allocate(task, scores, task.options)
    plan = plan_from_scores(task.graph, scores, keep, round_to=task.round_to)
    return PruneOutcome(plan, task.variables, {"keep": {str(k): v for k, v in keep.items()}})
