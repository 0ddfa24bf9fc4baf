"""Allocators without learning: ``uniform`` (one keep ratio for every group) and
``global`` (one threshold over cross-group-normalized saliencies), both through
:mod:`hobs_jax.allocation`. R-SPAR's learned allocator lives in :mod:`hobs_jax.rspar`
(declared here by name only).

Both allocate on the task's aligned grid (kept counts multiples of ``task.round_to``, the
width quantum, unless a group keeps all; the target search itself runs on that grid) and
under any budget: MACs, params, or, with ``metric='latency'``, the task's measured latency
table (:mod:`hobs_jax.allocation.latency`). In latency mode the global threshold compares
saliency per second saved (each group's normalized saliencies divided by the time one of
its channels saves, :meth:`~hobs_jax.allocation.latency.LatencyBudget.saved_per_channel`)
instead of per channel or per MAC. ``rank='latency'`` does the same ranking under a MACs or
params target (the task then carries a latency table only to rank with): the budget is
still MACs, but it is spent where the measured runtime saves the most time per unit of
saliency, which on a CPU keeps the narrow, high-resolution layers (whose channels save
little time) and prunes the wide, low-resolution ones."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from hobs_jax import allocation
from hobs_jax.methods.parts import Allocation, Selection
from hobs_jax.methods.registry import declare_part, register_part
from hobs_jax.options import Options

NORMALIZE = ("none", "mean", "max", "cost")


@dataclasses.dataclass(frozen=True)
class UniformOptions(Options):
    """No options: the ratio follows from the target."""


def budget_of(sel: Selection):
    """What the target is met in: the selection's cost model (MACs, params) or, for
    ``metric='latency'``, the task's latency budget (one line when a compensator restricts
    the pruned groups, which a latency table over every group cannot follow)."""
    t = sel.task
    if t.metric != "latency":
        return sel.cost
    if tuple(t.latency.group_ids) != tuple(sel.cost.group_ids):
        raise ValueError(f"{sel.spec.name}: metric='latency' needs every group prunable, but compensator "
                         f"{sel.spec.compensator!r} restricts them; use metric='macs'")
    return t.latency


def _declared(sel: Selection, keep) -> tuple[str, float] | None:
    return ("latency", float(sel.task.latency.ratio(keep))) if sel.task.metric == "latency" else None


class Uniform:
    """One keep ratio for every group (binary search on the ratio, then rounding repair;
    :func:`hobs_jax.allocation.uniform`). Needs no scores: its floor is its answer."""

    name = "uniform"
    Options = UniformOptions
    needs_data = False

    def floor(self, sel: Selection, options: UniformOptions) -> np.ndarray:
        t = sel.task
        return allocation.uniform(budget_of(sel), t.target, t.metric, round_to=t.round_to)

    def allocate(self, sel: Selection, options: UniformOptions) -> Allocation:
        keep = self.floor(sel, options)
        return Allocation(keep, budget=_declared(sel, keep))


@dataclasses.dataclass(frozen=True)
class GlobalOptions(Options):
    """normalize: how saliencies compare across groups (:func:`hobs_jax.allocation.normalize`;
    'cost' = per MAC/param one channel of the group costs); min_ratio: the smallest kept
    fraction of every group, in [0, 1); rank: 'metric' compares saliencies normalized as
    above, except under a latency target, where they are per second saved; 'latency'
    compares them per second saved (the task's latency table) under any target, e.g. a
    MACs budget spent where it buys the most measured time."""

    normalize: Literal["none", "mean", "max", "cost"] = "mean"
    min_ratio: float = 0.1
    rank: Literal["metric", "latency"] = "metric"

    def check(self):
        self.require(0.0 <= self.min_ratio < 1.0, "min_ratio", "must be in [0, 1)")


class Global:
    """One threshold over every channel's normalized saliency (``Scores.threshold``),
    each group keeping at least ``min_ratio`` (:func:`hobs_jax.allocation.global_keep`);
    the floor is that minimum, so greedy scorers run their paths down to it."""

    name = "global"
    Options = GlobalOptions
    needs_data = False

    def floor(self, sel: Selection, options: GlobalOptions) -> np.ndarray:
        t = sel.task
        floor = allocation.floors(sel.cost, float(options.min_ratio), t.round_to)
        allocation.check_reachable(budget_of(sel), t.target, t.metric, floor)
        return floor

    def allocate(self, sel: Selection, options: GlobalOptions) -> Allocation:
        t = sel.task
        assert sel.scores is not None  # set by the scorer, which runs before any allocator or compensator
        per_second = t.metric == "latency" or options.rank == "latency"
        if per_second and t.latency is None:
            raise ValueError(f"{sel.spec.name}: rank='latency' needs a latency table on the task "
                             "(make_task(..., latency=...); pipeline: prune.latency.*)")
        if per_second and tuple(t.latency.group_ids) != tuple(sel.cost.group_ids):
            raise ValueError(f"{sel.spec.name}: a latency ranking needs every group prunable, but compensator "
                             f"{sel.spec.compensator!r} restricts them; use rank='metric'")
        keep = allocation.global_keep(sel.cost, sel.scores.threshold, t.target, t.metric,
                                      normalize=options.normalize, min_ratio=float(options.min_ratio),
                                      round_to=t.round_to, budget=t.latency if per_second else None,
                                      per_budget=per_second)
        return Allocation(keep, budget=_declared(sel, keep))


register_part("allocator", Uniform())
register_part("allocator", Global())
declare_part("allocator", "rspar", "hobs_jax.rspar.allocator:ALLOCATOR")
