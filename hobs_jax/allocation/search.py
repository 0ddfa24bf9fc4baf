"""Allocation without RL: how many channels each group keeps so the pruned model has a
target fraction of the MACs (or params), met within 1%.

* :func:`uniform` - one keep ratio for every group (binary search on the ratio), then
  single-step adjustments of the groups with the most rounding slack until the target
  holds within tolerance (a uniform ratio alone moves in coarse steps on small nets).
* :func:`global_threshold` - one saliency threshold over all channels of all groups
  (binary search), with a per-group floor; the caller normalizes saliencies so they
  compare across groups (:func:`normalize`); :func:`global_keep` does both, for
  saliencies that may be +inf (channels a scorer never removes).
* :func:`restrict` - the cost model over a subset of the groups (the others fixed at
  full size), for methods that prune only some groups (UDFC).

A target no allocation can meet raises :class:`Unreachable` (a ``ValueError``).

Both respect ``round_to`` (kept counts are multiples of it unless a group keeps all) and
return kept counts per group; :func:`hobs_jax.graph.plan_from_scores` turns counts and
per-channel scores into a :class:`~hobs_jax.graph.PrunePlan`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hobs_jax.allocation.cost import CostModel

TOLERANCE = 0.01


class Unreachable(ValueError):
    """The target cannot be met even with every prunable group at its floor."""


@dataclasses.dataclass(frozen=True)
class Allocation:
    """An allocator's answer (:class:`hobs_jax.methods.parts.Allocator`): ``keep`` [G]
    kept counts (cost-model group order), JSON-able ``info`` (reported under the
    allocator's name), the ``budget`` (kind, kept fraction) it was met in when that is not
    the task's metric, and ``artifacts`` (name -> writer of files at a path prefix, e.g.
    plots; returns the paths written)."""

    keep: np.ndarray
    info: Mapping = dataclasses.field(default_factory=dict)
    budget: tuple[str, float] | None = None
    artifacts: Mapping[str, Callable[[str], Sequence[str]]] = dataclasses.field(default_factory=dict)


def _round(n: float, size: int, round_to: int, floor: int) -> int:
    n = max(floor, min(size, int(math.ceil(n - 1e-9))))
    if round_to > 1 and n < size:
        n = min(size, int(math.ceil(n / round_to)) * round_to)
    return n


def floors(cost: CostModel, min_ratio: float, round_to: int) -> np.ndarray:
    """Smallest count each group may keep: ceil(min_ratio * size), >= 1, rounded."""
    return np.array([_round(max(1.0, min_ratio * s), s, round_to, 1) for s in cost.sizes], np.float64)


def check_reachable(cost: CostModel, target: float, metric: str, floor: np.ndarray) -> None:
    """One-line error when even the floors (maximum pruning) miss ``target``."""
    if not 0 < target < 1:
        raise ValueError(f"target={target!r}: the kept fraction must be in (0, 1)")
    best = cost.ratio(floor, metric)
    if best > target * (1 + TOLERANCE):
        raise Unreachable(f"target {target:.4f} of the {metric} is unreachable: pruning every prunable "
                         f"group to its floor still keeps {best:.4f} (the rest is in layers no prunable "
                         f"group sizes, e.g. the stem's input and the classifier's outputs)")


def reachable_quantum(cost, target: float, metric: str, quantum: int, min_ratio: float = 0.0) -> int:
    """The coarsest of ``quantum``, ``quantum // 2``, ..., 1 at which ``target`` is still
    reachable (:func:`check_reachable` with every group at its aligned floor): a network
    whose groups are no wider than the quantum cannot be pruned at it, so ``align='auto'``
    steps down rather than failing. ``cost``: anything with ``ratio(keep, metric)`` and
    ``sizes`` (a :class:`CostModel` or a latency budget)."""
    q = int(quantum)
    if q < 1:
        raise ValueError(f"quantum={quantum!r}: must be >= 1")
    while q > 1:
        try:
            check_reachable(cost, target, metric, floors(cost, min_ratio, q))
            return q
        except Unreachable:
            q //= 2
    return 1


def _adjust(cost: CostModel, keep: np.ndarray, target: float, metric: str, round_to: int,
            floor: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Step single groups (by ``round_to``) toward the target, in ``order`` of preference,
    until |ratio / target - 1| <= TOLERANCE or no step helps."""
    keep = keep.copy()
    step = float(max(1, round_to))
    for _ in range(10 * len(keep) + 100):
        r = cost.ratio(keep, metric)
        if abs(r / target - 1) <= TOLERANCE:
            return keep
        best, best_err = None, abs(r / target - 1)
        for g in order:
            cand = keep[g] - step if r > target else keep[g] + step
            cand = min(cost.sizes[g], max(floor[g], cand))
            if cand == keep[g]:
                continue
            trial = keep.copy()
            trial[g] = cand
            err = abs(cost.ratio(trial, metric) / target - 1)
            if err < best_err - 1e-12:
                best, best_err = (g, cand), err
                if err <= TOLERANCE:
                    break
        if best is None:  # no single step helps: trade a step of one group for another's
            best = _best_swap(cost, keep, metric, target, step, floor, order, best_err)
            if best is None:
                return keep
            keep = best
            continue
        keep[best[0]] = best[1]
    return keep


def _best_swap(cost: CostModel, keep: np.ndarray, metric: str, target: float, step: float,
               floor: np.ndarray, order: np.ndarray, err: float) -> np.ndarray | None:
    """``keep`` with one group a ``step`` lower and another a ``step`` higher, the pair
    that brings the ratio closest to ``target`` (None if none beats ``err``): where groups
    differ in cost per channel, single steps can all overshoot the tolerance band while
    a trade lands inside it (R-SPAR episodes on narrow networks)."""
    best, best_err = None, err
    for g in order:
        if keep[g] - step < max(floor[g], 1):
            continue
        for h in order:
            if h == g or keep[h] + step > cost.sizes[h]:
                continue
            trial = keep.copy()
            trial[g] -= step
            trial[h] += step
            e = abs(cost.ratio(trial, metric) / target - 1)
            if e < best_err - 1e-12:
                best, best_err = trial, e
    return best


def repair(cost: CostModel, keep: np.ndarray, target: float, metric: str = "macs", *,
           round_to: int = 1, floor: np.ndarray | None = None,
           order: np.ndarray | None = None) -> np.ndarray:
    """[G] ``keep`` moved toward ``target`` one ``round_to`` step of one group at a time
    (groups tried in ``order``, default graph order) until within :data:`TOLERANCE` or no
    step helps: the rounding repair of :func:`uniform` / :func:`global_threshold`, for
    allocations made elsewhere (R-SPAR's episodes)."""
    floor = np.ones(len(keep)) if floor is None else np.asarray(floor, np.float64)
    order = np.arange(len(keep)) if order is None else np.asarray(order)
    return _adjust(cost, np.asarray(keep, np.float64), target, metric, round_to, floor, order)


def uniform(cost: CostModel, target: float, metric: str = "macs", *, round_to: int = 1,
            min_ratio: float = 0.0) -> np.ndarray:
    """[G] kept counts: one ratio for all groups, then rounding repair (see module doc)."""
    floor = floors(cost, min_ratio, round_to)
    check_reachable(cost, target, metric, floor)
    sizes = cost.sizes.astype(np.float64)

    def keep_at(r: float) -> np.ndarray:
        return np.array([_round(r * s, int(s), round_to, int(f)) for s, f in zip(sizes, floor)], np.float64)

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost.ratio(keep_at(mid), metric) > target:
            hi = mid
        else:
            lo = mid
    keep = keep_at(lo)
    slack = keep - lo * sizes  # rounding surplus: these groups drift furthest from the ratio
    return _adjust(cost, keep, target, metric, round_to, floor, np.argsort(-slack, kind="stable"))


def normalize(scores: Mapping[int, np.ndarray], cost: CostModel, how: str = "mean",
              metric: str = "macs") -> dict[int, np.ndarray]:
    """Make per-channel saliencies comparable across groups.

    how: 'none'; 'mean' (divide by the group's mean saliency); 'max'; 'cost' (divide by
    the MACs or params one channel of the group costs, so a channel's score is saliency
    per unit of budget).
    """
    out = {}
    full = cost.full
    for i, gid in enumerate(cost.group_ids):
        s = np.asarray(scores[gid], np.float64)
        if how == "none":
            out[gid] = s
        elif how in ("mean", "max"):
            d = s.mean() if how == "mean" else s.max()
            out[gid] = s / d if d > 0 else s
        elif how == "cost":
            less = full.copy()
            less[i] -= 1
            f = cost.macs if metric == "macs" else cost.params
            unit = max(f(full) - f(less), 1e-12)
            out[gid] = s / unit
        else:
            raise ValueError(f"normalize: unknown how={how!r}; use none, mean, max or cost")
    return out


def global_threshold(cost: CostModel, scores: Mapping[int, np.ndarray], target: float,
                     metric: str = "macs", *, round_to: int = 1, min_ratio: float = 0.1) -> np.ndarray:
    """[G] kept counts from one threshold on comparable scores (higher survives)."""
    floor = floors(cost, min_ratio, round_to)
    check_reachable(cost, target, metric, floor)
    per_group = [np.sort(np.asarray(scores[g], np.float64))[::-1] for g in cost.group_ids]

    def keep_at(tau: float) -> np.ndarray:
        return np.array([_round(int(np.count_nonzero(s >= tau)), len(s), round_to, int(f))
                         for s, f in zip(per_group, floor)], np.float64)

    values = np.unique(np.concatenate(per_group))
    lo, hi = 0, len(values) - 1  # keep_at(values[0]) keeps all; larger index -> fewer kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost.ratio(keep_at(values[mid]), metric) >= target:
            lo = mid
        else:
            hi = mid - 1
    keep = keep_at(values[lo])
    # Prefer to drop the lowest-scored surviving channel first when stepping down.
    worst_kept = np.array([s[int(k) - 1] if k > 0 else np.inf for s, k in zip(per_group, keep)])
    return _adjust(cost, keep, target, metric, round_to, floor, np.argsort(worst_kept, kind="stable"))


def normalize_finite(scores: Mapping[int, np.ndarray], cost: CostModel, how: str = "mean",
                     metric: str = "macs") -> dict[int, np.ndarray]:
    """:func:`normalize` of the groups of ``cost`` where +inf (never removed) stands in as
    the group's largest finite score during normalization and is restored afterwards."""
    finite, raw = {}, {}
    for g in cost.group_ids:
        s = np.asarray(scores[g], np.float64)
        top = s[np.isfinite(s)].max() if np.isfinite(s).any() else 1.0
        finite[g], raw[g] = np.where(np.isfinite(s), s, top), s
    normed = normalize(finite, cost, how, metric)
    return {g: np.where(np.isfinite(raw[g]), normed[g], np.inf) for g in cost.group_ids}


def global_keep(cost: CostModel, scores: Mapping[int, np.ndarray], target: float, metric: str = "macs", *,
                normalize: str = "mean", min_ratio: float = 0.1, round_to: int = 1, budget=None,
                per_budget: bool = False) -> np.ndarray:
    """[G] kept counts of a global threshold on ``scores`` (group id -> [size], higher
    survives, +inf never removed) normalized across groups by ``normalize``
    (:func:`normalize_finite`, per MAC/param of ``cost`` for 'cost'), each group keeping at
    least ``min_ratio`` of its channels (rounded to ``round_to``). ``budget``: another cost
    with the ``ratio(keep, metric)`` / ``sizes`` interface to meet the target in (a latency
    table). ``per_budget`` (a budget with ``saved_per_channel``, e.g.
    :class:`~hobs_jax.allocation.latency.LatencyBudget`): the normalized saliencies are
    divided by the time one channel of their group saves (from full down to its floor), so
    the threshold removes the least saliency per second saved ('cost' then means no other
    normalization); otherwise the normalization stays per MAC/param. The target is met in
    ``budget`` when ``metric='latency'``, otherwise in ``cost``: with ``per_budget`` and a
    MACs/params metric the table only ranks channels (a MACs budget spent where it buys the
    most time), the MACs/params target is met exactly as without it."""
    if per_budget:
        if budget is None or not hasattr(budget, "saved_per_channel"):
            raise ValueError("global_keep: per_budget needs a budget with saved_per_channel (a latency table)")
        how = "none" if normalize == "cost" else normalize
        normed = normalize_finite(scores, cost, how, "macs")
        unit = budget.saved_per_channel(floors(cost, min_ratio, round_to))
        normed = {g: normed[g] / unit[i] for i, g in enumerate(cost.group_ids)}
    else:
        normed = normalize_finite(scores, cost, normalize, "macs" if metric == "latency" else metric)
    meet = budget if (metric == "latency" and budget is not None) else cost
    return global_threshold(meet, normed, target, metric, round_to=round_to, min_ratio=min_ratio)


def restrict(cost: CostModel, groups: Sequence[int]) -> CostModel:
    """The cost model over ``groups`` only, the other groups fixed at full size."""
    idx = [cost.group_ids.index(g) for g in groups]
    rest = [i for i in range(len(cost.group_ids)) if i not in idx]
    sizes = cost.sizes.astype(np.float64)

    def fix(coef, exp):
        return coef * np.prod(sizes[rest][None, :] ** exp[:, rest], axis=1), exp[:, idx]

    mc, me = fix(cost.macs_coef, cost.macs_exp)
    pc, pe = fix(cost.params_coef, cost.params_exp)
    return dataclasses.replace(cost, group_ids=tuple(groups), sizes=cost.sizes[idx], macs_coef=mc, macs_exp=me,
                               params_coef=pc, params_exp=pe)
