"""The scorer and allocator of methods whose architecture is learned during training
(JTP, BilevelPruning, StructAlign): both read the regularizer's :class:`Trained`
(``Selection.trained``).

* ``learned`` scorer - the channel scores the training produced (a generator's or a
  gate's logits, or the aligned weights' norms); groups it did not decide are ranked by
  their group L2 norm.
* ``learned`` allocator - the proposed kept counts, brought onto the budget exactly: one
  factor ``alpha`` scales every proposed keep ratio (bisection, each group clipped to
  [its floor, its size]) so that the kept fraction of the task's metric is just at or
  below the target, then single-step repairs (:func:`hobs_jax.allocation.repair`) move it
  within 1%. A generator trained with a resource term already proposes an architecture
  near the target (``alpha`` close to 1, reported); the rescaling only removes the last
  percent that a soft FLOPs penalty leaves, so every row of a table is iso-MACs. The
  allocator also returns the decisions as the ``<method>_decisions`` artifact (JSON).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from hobs_jax import allocation
from hobs_jax.graph import group_l2_scores
from hobs_jax.methods.magnitude import NoOptions
from hobs_jax.methods.parts import Allocation, Scores, Selection
from hobs_jax.methods.registry import register_part
from hobs_jax.options import Options


def _trained(sel: Selection):
    if sel.trained is None:
        raise ValueError(f"{sel.spec.name}: its allocation comes from its training phase, which did not run "
                         f"(the regularizer has no steps)")
    return sel.trained


class LearnedScorer:
    """Channel scores from :class:`~hobs_jax.methods.parts.Trained` (module doc)."""

    name = "learned"
    Options = NoOptions
    needs_data = False

    def score(self, sel: Selection, options: NoOptions) -> Scores:
        tr = _trained(sel)
        l2 = group_l2_scores(sel.task.graph, sel.task.variables)
        return Scores.from_importance({g: np.asarray(tr.scores[g], np.float64) if g in tr.scores else l2[g]
                                       for g in sel.group_ids})

    def report(self, sel, keep, options) -> dict:
        return {}


def scaled_keep(cost, ratios: np.ndarray, target: float, metric: str, *, round_to: int = 1,
                floor: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """([G] kept counts, alpha): ``ceil(alpha * ratios * sizes)`` clipped to [floor, size]
    and rounded up to ``round_to``, with the largest ``alpha`` whose kept fraction of
    ``metric`` is <= ``target``, then repaired to within :data:`hobs_jax.allocation.TOLERANCE`."""
    sizes = cost.sizes.astype(np.float64)
    floor = np.ones(len(sizes)) if floor is None else np.asarray(floor, np.float64)
    ratios = np.clip(np.asarray(ratios, np.float64), 1e-6, 1.0)

    def keep_at(a: float) -> np.ndarray:
        k = np.ceil(a * ratios * sizes - 1e-9)
        if round_to > 1:
            k = np.where(k < sizes, np.ceil(k / round_to) * round_to, k)
        return np.clip(k, floor, sizes)

    allocation.check_reachable(cost, target, metric, floor)
    lo, hi = 0.0, float(1.0 / ratios.min())
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost.ratio(keep_at(mid), metric) > target:
            hi = mid
        else:
            lo = mid
    keep = allocation.repair(cost, keep_at(lo), target, metric, round_to=round_to, floor=floor,
                             order=np.argsort(-(keep_at(lo) - lo * ratios * sizes), kind="stable"))
    return keep, lo


@dataclasses.dataclass(frozen=True)
class LearnedOptions(Options):
    """No options: the kept counts follow from the training's proposal and the target."""


class LearnedAllocator:
    """The training's proposed architecture, scaled onto the budget (module doc)."""

    name = "learned"
    Options = LearnedOptions
    needs_data = False

    def floor(self, sel: Selection, options: LearnedOptions) -> np.ndarray:
        tr = _trained(sel)
        # Groups the training did not decide (not maskable) stay at full width.
        floor = np.array([1.0 if g in tr.keep else float(s) for g, s in zip(sel.cost.group_ids, sel.cost.sizes)])
        if sel.task.round_to > 1:
            floor = np.minimum(np.ceil(floor / sel.task.round_to) * sel.task.round_to, sel.cost.sizes)
        allocation.check_reachable(sel.cost, sel.task.target, sel.task.metric, floor)
        return floor

    def allocate(self, sel: Selection, options: LearnedOptions) -> Allocation:
        tr, t = _trained(sel), sel.task
        sizes = sel.cost.sizes.astype(np.float64)
        ratios = np.array([tr.keep.get(g, s) / s for g, s in zip(sel.cost.group_ids, sizes)])
        keep, alpha = scaled_keep(sel.cost, ratios, t.target, t.metric, round_to=t.round_to,
                                  floor=self.floor(sel, options))
        proposed = np.array([tr.keep.get(g, s) for g, s in zip(sel.cost.group_ids, sizes)])
        info = {"proposed": {str(g): int(k) for g, k in zip(sel.cost.group_ids, proposed)},
                "proposed_ratio": float(sel.cost.ratio(proposed, t.metric)), "alpha": float(alpha)}
        record = {"method": sel.spec.name, "metric": t.metric, "target": float(t.target), **info,
                  "keep": {str(g): int(k) for g, k in zip(sel.cost.group_ids, keep)},
                  "decisions": tr.decisions}

        def write(prefix: str) -> list[str]:
            os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
            with open(prefix + ".json", "w") as f:
                json.dump(record, f, indent=1)
            return [prefix + ".json"]

        return Allocation(keep, info=info, artifacts={f"{sel.spec.name}_decisions": write})


register_part("scorer", LearnedScorer())
register_part("allocator", LearnedAllocator())
