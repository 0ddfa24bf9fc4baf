"""The R-SPAR environment: one episode chooses a keep ratio for every prunable group, in
graph (topological) order, under a budget that holds by construction.

As in AMC (He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile
Devices", ECCV 2018): the state of step t describes group t (static features: index,
layer type, channels, kernel, stride, MACs and params that depend on it, plus its H-OBS
sensitivity) and the episode so far (budget removed, still removable, still needed,
previous action); the action is a keep ratio ``a in [lbound, 1]``. Before it is applied
the action is *clipped* so that the target stays reachable when every later group is
pruned to its floor (AMC's clipping), then snapped to the group's grid of kept counts
(multiples of ``round_to``, the counts the fast reward has precomputed). The episode's
allocation therefore never exceeds the budget; a final repair
(:func:`hobs_jax.allocation.repair`, the same one the uniform and global allocations use)
moves it to within 1% of the target, spending leftover budget on the groups whose
action was clipped the most.

Budgets are fractions of the dense network's cost: :class:`MonomialBudget` wraps the
exact MACs/params :class:`~hobs_jax.allocation.CostModel`; the latency budget
(:mod:`hobs_jax.rspar.latency`) sums a measured per-layer lookup table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, cast

import numpy as np

from hobs_jax import allocation
from hobs_jax.allocation.cost import CostModel

#: Per-step dynamic features appended to a group's static features.
DYNAMIC = ("index", "removed", "removable", "needed", "prev_action")


class Budget(Protocol):
    """A cost of the pruned network as a fraction of the dense one's, over kept counts."""

    kind: str

    def ratio(self, keep: np.ndarray) -> float: ...

    def ratio_along(self, keep: np.ndarray, t: int, counts: np.ndarray) -> np.ndarray:
        """[K] the ratio with ``keep[t]`` replaced by each of ``counts`` [K]."""
        ...


@dataclasses.dataclass(frozen=True)
class MonomialBudget:
    """MACs or params from the exact cost model: every layer's cost is
    ``coef_l * prod_g keep_g ** exp_lg``, so the cost along one group's counts is a sum of
    monomials in that count (evaluated for all candidates at once)."""

    cost: CostModel
    kind: str = "macs"

    def __post_init__(self):
        if self.kind not in ("macs", "params"):
            raise ValueError(f"budget kind {self.kind!r}: use 'macs', 'params' or 'latency'")

    def _arrays(self):
        if self.kind == "macs":
            return self.cost.macs_coef, self.cost.macs_exp
        return self.cost.params_coef, self.cost.params_exp

    def ratio(self, keep) -> float:
        return self.cost.ratio(keep, self.kind)

    def ratio_along(self, keep, t, counts) -> np.ndarray:
        coef, exp = self._arrays()
        k = np.asarray(keep, np.float64).copy()
        k[t] = 1.0
        rest = coef * np.prod(np.power(k[None, :], exp), axis=1)  # [L]
        c = np.asarray(counts, np.float64)
        total = (rest[None, :] * np.power(c[:, None], exp[None, :, t])).sum(axis=1)
        full = float(np.sum(coef * np.prod(np.power(self.cost.full[None, :], exp), axis=1)))
        return total / full


def kept_grid(size: int, floor: int, round_to: int, max_points: int) -> np.ndarray:
    """[K] ascending admissible kept counts of one group: ``floor``, multiples of
    ``round_to`` above it, and ``size``; evenly subsampled (ends kept) to at most
    ``max_points``."""
    step = max(1, int(round_to))
    counts = [c for c in range(int(floor), int(size)) if c == floor or c % step == 0] + [int(size)]
    counts = np.unique(np.asarray(counts, np.int64))
    if len(counts) > max_points:
        pick = np.unique(np.round(np.linspace(0, len(counts) - 1, max_points)).astype(int))
        counts = counts[pick]
    return counts


@dataclasses.dataclass
class Episode:
    """One rollout: ``states`` [G, F], ``actions`` [G] (the agent's ratio, before
    clipping), ``index`` [G] grid index per group after clipping and repair, ``keep`` [G]
    kept counts, ``ratio`` the budget ratio reached."""

    states: np.ndarray
    actions: np.ndarray
    index: np.ndarray
    keep: np.ndarray
    ratio: float


class AllocationEnv:
    """Episodes over G groups (see module doc).

    Args:
      budget: a :class:`Budget`; ``target`` its kept fraction in (0, 1).
      sizes: [G] full group sizes; ``grids``: per group, ascending kept counts (from
        :func:`kept_grid`; the last is the size, the first the floor).
      static: [G, S] per-group features, each column already scaled to [0, 1].
      lbound: smallest keep ratio an action may ask for, in (0, 1].
      round_to: kept counts are multiples of it (unless a group keeps all).
    """

    def __init__(self, budget: Budget, target: float, sizes, grids, static: np.ndarray, *,
                 lbound: float, round_to: int = 1):
        check_lbound(lbound)
        self.budget, self.target, self.lbound, self.round_to = budget, float(target), float(lbound), int(round_to)
        self.sizes = np.asarray(sizes, np.float64)
        self.grids = [np.asarray(g, np.float64) for g in grids]
        self.static = np.asarray(static, np.float32)
        self.G = len(self.sizes)
        self.floor = np.array([g[0] for g in self.grids])
        best = budget.ratio(self.floor)
        if best > self.target * (1 + allocation.TOLERANCE):
            raise allocation.Unreachable(f"target {self.target:.4f} of the {budget.kind} is unreachable: every "
                                         f"prunable group at its floor (lbound={self.lbound}) still keeps {best:.4f}")
        self.state_dim = self.static.shape[1] + len(DYNAMIC)

    def _state(self, t: int, keep: np.ndarray, prev: float) -> np.ndarray:
        """[F] features of step t; ``keep`` holds chosen counts for groups < t."""
        prefix_full = np.where(np.arange(self.G) < t, keep, self.sizes)
        prefix_floor = np.where(np.arange(self.G) < t, keep, self.floor)
        r_full, r_floor = self.budget.ratio(prefix_full), self.budget.ratio(prefix_floor)
        dyn = [t / max(self.G - 1, 1), 1.0 - r_full, r_full - r_floor,
               max(r_full - self.target, 0.0), prev]
        return np.concatenate([self.static[t], np.asarray(dyn, np.float32)]).astype(np.float32)

    def clip(self, t: int, keep: np.ndarray, action: float) -> int:
        """Grid index for group t: the grid count nearest ``action * size`` among those
        that keep ``budget <= target`` with every later group at its floor."""
        grid = self.grids[t]
        trial = np.where(np.arange(self.G) < t, keep, self.floor)
        ratios = self.budget.ratio_along(trial, t, grid)
        feasible = np.flatnonzero(ratios <= self.target + 1e-12)
        top = int(feasible[-1]) if len(feasible) else 0
        want = int(np.argmin(np.abs(grid - float(action) * self.sizes[t])))
        return min(want, top)

    def rollout(self, act: Callable[[np.ndarray, int], float], *, repair: bool = True) -> Episode:
        """Run one episode with ``act(state [F], t) -> ratio`` (clipped to [lbound, 1]);
        ``repair=False`` returns the clipped allocation before the final repair."""
        keep = self.sizes.copy()
        states, actions, index = [], [], np.zeros(self.G, np.int64)
        prev = 1.0
        for t in range(self.G):
            s = self._state(t, keep, prev)
            a = float(np.clip(act(s, t), self.lbound, 1.0))
            index[t] = self.clip(t, keep, a)
            keep[t] = self.grids[t][index[t]]
            states.append(s)
            actions.append(a)
            prev = a
        actions = np.asarray(actions, np.float32)
        if repair:
            keep, index = self.repair(keep, actions)
        return Episode(np.stack(states), actions, index, keep, self.budget.ratio(keep))

    def repair(self, keep: np.ndarray, actions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keep, grid index) within 1% of the target (see module doc); groups whose
        request exceeded their count the most are grown first."""
        gap = (np.zeros(self.G) if actions is None else actions * self.sizes - keep) / self.sizes
        keep = allocation.repair(AsCost(self.budget).cost_model(), keep, self.target, self.budget.kind,
                                 round_to=self.round_to, floor=self.floor, order=np.argsort(-gap, kind="stable"))
        return keep, self.snap(keep)

    def snap(self, keep: np.ndarray) -> np.ndarray:
        """[G] the grid index nearest to each kept count (exact when the count is on it)."""
        return np.array([int(np.argmin(np.abs(g - k))) for g, k in zip(self.grids, keep)], np.int64)


class AsCost:
    """A :class:`Budget` seen through the ``CostModel.ratio(keep, metric)`` and ``sizes``
    interface :func:`hobs_jax.allocation.repair` uses."""

    def __init__(self, budget: Budget):
        self.budget = budget
        # a budget over a cost model carries it as .cost; other budgets carry sizes and
        # group_ids themselves (the Budget protocol does not name them)
        source: Any = getattr(budget, "cost", None) or budget
        self.sizes = source.sizes
        self.group_ids = source.group_ids

    def ratio(self, keep, metric=None) -> float:
        return self.budget.ratio(keep)

    def cost_model(self) -> CostModel:
        """This view typed as the :class:`CostModel` that ``allocation.repair`` and
        ``allocation.uniform`` take: they read only ``ratio``, ``sizes`` and ``group_ids``."""
        return cast(CostModel, self)


def check_lbound(lbound) -> None:
    if isinstance(lbound, bool) or not isinstance(lbound, (int, float)) or not 0 < float(lbound) <= 1:
        raise ValueError(f"lbound={lbound!r}: the smallest keep ratio must be in (0, 1]")
