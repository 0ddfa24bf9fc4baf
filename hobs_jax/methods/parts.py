"""The parts a pruning method is composed of, each a small typed protocol.

A registered method (:class:`hobs_jax.methods.MethodSpec`) is a named composition::

    regularizer? -> scorer -> allocator -> plan -> compensator

* :class:`Regularizer` (optional) - acts during training, before anything is scored: an
  ``optax.GradientTransformation`` and/or a loss term that the training engine applies
  through the task's fine-tune callback without knowing the method (DepGraph's group
  sparse learning). A regularizer that alternates training with updates of its own
  (an agent, an architecture generator, gates: JTP, BilevelPruning, StructAlign)
  implements ``train`` and drives the callback itself, one call per round; what it
  learned comes back as :class:`Trained` (``Selection.trained``).
* :class:`Scorer` - per channel group, which channels matter: :class:`Scores` (a
  within-group ranking for the plan, cross-group saliencies for global thresholds, and
  the removal order with its marginal losses, at least down to the allocator's floor).
* :class:`Allocator` - per-group kept counts under the budget (MACs, params or a latency
  table): uniform, a global threshold, R-SPAR's agent. It declares the smallest counts
  it may choose (:meth:`Allocator.floor`) so that scorers with greedy paths know how far
  to go, and may reserve calibration images for itself (:meth:`Allocator.holdout`).
* :class:`Compensator` - the full-size variables the plan slices: unchanged, OBS
  compensation and refit, UDFC's data-free reconstruction. It may restrict which
  groups are pruned (:meth:`Compensator.groups`) and precomputes, for an allocator that
  searches (R-SPAR), the change of the weights at each kept count of one group
  (:meth:`Compensator.grid`).

Parts are stateless objects with a ``name``, an ``Options`` class (a frozen
:class:`hobs_jax.options.Options` dataclass) and ``needs_data``; the state of one run is
a :class:`Selection` (built once, shared by the parts, e.g. the layer Hessians several
parts read). Parts are found by name in per-kind registries
(:mod:`hobs_jax.methods.registry`), so a hybrid is one line::

    register_method("magnitude_obs", scorer="l2", allocators=("uniform", "global"),
                    compensator="obs", summary="...")
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from hobs_jax.allocation import Allocation
from hobs_jax.methods.base import Calibration, PruneTask
from hobs_jax.obs.timing import Timer
from hobs_jax.options import Options

__all__ = ["Allocation", "Allocator", "Compensator", "Part", "Regularizer", "Scorer", "Scores", "Selection",
           "Trained"]


@dataclasses.dataclass(frozen=True)
class Scores:
    """A scorer's answer, per group id of the allocation's cost model.

    Attributes:
      channel: [size] plan scores: the plan keeps the top-k (ties: lower index).
      threshold: [size] saliencies for a global threshold before cross-group
        normalization (higher survives; +inf: a channel the scorer never removes).
      order: removal order, first removed first, at least down to the floor (the first
        ``size - k`` channels of it are exactly those the plan removes at k kept).
      losses: [len(order)] the marginal loss of each removal along ``order``.
      info: JSON-able facts for ``PruneOutcome.info``.
    """

    channel: Mapping[int, np.ndarray]
    threshold: Mapping[int, np.ndarray]
    order: Mapping[int, np.ndarray]
    losses: Mapping[int, np.ndarray]
    info: Mapping = dataclasses.field(default_factory=dict)

    @classmethod
    def from_importance(cls, importance: Mapping[int, np.ndarray], **info) -> Scores:
        """Scores of an importance per channel (higher survives): the same array ranks
        within and across groups; the removal order is the plan's order reversed."""
        imp = {g: np.asarray(s, np.float64) for g, s in importance.items()}
        order = {g: np.argsort(-s, kind="stable")[::-1].copy() for g, s in imp.items()}
        return cls(imp, imp, order, {g: imp[g][order[g]] for g in imp}, dict(info))


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a regularizer that drives its own training (:meth:`Regularizer.train`) learned.

    Attributes:
      variables: the trained full-size variables (host arrays, the input's dtypes).
      keep: group id -> kept count of the architecture it proposes (groups it does not
        decide keep everything).
      scores: group id -> [size] channel scores (higher survives) for the groups it decides.
      decisions: JSON-able record of its decisions (per-layer ratios, gates, generator
        output), written as the outcome's ``<method>_decisions.json`` artifact.
      info: JSON-able facts for ``PruneOutcome.info``.
    """

    variables: Mapping
    keep: Mapping[int, int]
    scores: Mapping[int, np.ndarray]
    decisions: Mapping
    info: Mapping = dataclasses.field(default_factory=dict)


class Selection:
    """One run's shared state (built by ``MethodSpec.select``), what every part reads.

    Attributes:
      spec: the method; ``options``: its :class:`~hobs_jax.methods.MethodOptions`.
      task: the task the parts work on: its variables are those after the regularizer's
        training (if any), its ``calib`` the calibration images not held out.
      holdout: the images the allocator reserved (:meth:`Allocator.holdout`), or None.
      cost: the cost model allocations are made in (the task's, restricted to the
        compensator's groups when it restricts them).
      floor: [G] the smallest kept counts the allocator may choose.
      scores: the scorer's :class:`Scores` (None until scored).
      timer: phase timings (``info['timings']``; see :mod:`hobs_jax.obs.timing`).
      trained: the regularizer's :class:`Trained` when it drives its own training, else None.
    """

    trained: Trained | None = None

    def __init__(self, spec, task: PruneTask, options, holdout: Calibration | None, cost, timer: Timer):
        self.spec, self.task, self.options, self.holdout, self.cost, self.timer = (
            spec, task, options, holdout, cost, timer)
        self.floor: np.ndarray | None = None
        self.scores: Scores | None = None
        self._shared: dict = {}

    def with_task(self, **changes) -> Selection:
        """A copy sharing this run's state and scores whose task has ``changes`` (another
        ``target``: the orders do not depend on it, so one selection serves every target whose
        allocation stays above ``floor``; the uniform allocator's floor is its own answer at
        the selection's target, so a lower target needs a new selection, as
        :func:`hobs_jax.methods.measured.allocate_measured` does)."""
        new = copy.copy(self)
        new.task = dataclasses.replace(self.task, **changes)
        return new

    def shared(self, key, build: Callable[[], Any]) -> Any:
        """``build()`` once per key and run: state several parts read (layer Hessians)."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    @property
    def group_ids(self) -> tuple[int, ...]:
        return tuple(self.cost.group_ids)

    def layers(self) -> tuple[dict, dict]:
        """(traced layers {path: LayerInfo}, {group id: :class:`~hobs_jax.obs.ChannelGroup`}
        of the allocation's groups), computed once per run."""
        def build():
            from hobs_jax.methods.obs_groups import group_roles
            from hobs_jax.stats.layers import trace_layers

            t = self.task
            infos = trace_layers(t.model, t.variables, t.input_shape)
            ids = set(self.cost.group_ids)
            return infos, {g: r for g, r in group_roles(t.graph, infos).items() if g in ids}
        return self.shared("layers", build)

    def channel_groups(self) -> dict:
        """{group id: :class:`~hobs_jax.obs.ChannelGroup`}: how each group meets the layers."""
        return self.layers()[1]

    def grid(self, gid: int, counts: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        """{(layer path, leaf): [K, *shape]} weight changes when group ``gid`` alone keeps
        each of ``counts`` (its first ``size - k`` channels of ``scores.order`` removed),
        compensated as this method's compensator compensates (:meth:`Compensator.grid`)."""
        comp = self.spec.part("compensator")
        if not hasattr(comp, "grid"):
            raise ValueError(f"{self.spec.name}: compensator {comp.name!r} cannot precompute per-count "
                             f"compensations, which allocator {self.options.allocation!r} needs")
        assert self.scores is not None  # set by the scorer, which runs before any allocator or compensator
        return comp.grid(self, gid, np.asarray(self.scores.order[gid]), counts, self.options.compensator)


class Part(Protocol):
    """What every part has: a registry ``name``, its ``Options`` class, ``needs_data``
    (whether it needs calibration images), and optionally ``check(task, options)``: one-line
    errors for what depends on the task, raised before any work."""

    name: str
    Options: type[Options]
    needs_data: bool


class Regularizer(Part, Protocol):
    """Acts during training, before scoring (module doc)."""

    def steps(self, options: Options) -> int:
        """Training steps to run (0: the part is off)."""

    def transform(self, task: PruneTask, options: Options) -> Any:
        """An ``optax.GradientTransformation`` applied to the gradients before the
        optimizer (needs ``params`` in ``update``), or None."""

    def loss(self, task: PruneTask, options: Options) -> Callable | None:
        """A loss term ``params -> scalar`` added to the training loss, or None."""

    def info(self, options: Options) -> dict:
        """Facts for ``PruneOutcome.info``."""

    # Optional: ``train(task, options) -> Trained`` - the regularizer drives
    # ``task.finetune`` itself (several rounds, its own updates in between) instead of
    # one call with ``transform``/``loss``; the driver then uses ``Trained.variables``.


class Scorer(Part, Protocol):
    def score(self, sel: Selection, options: Options) -> Scores:
        """:class:`Scores` for ``sel.group_ids`` whose removal orders reach ``sel.floor``."""

    def report(self, sel: Selection, keep: Mapping[int, int], options: Options) -> dict:
        """Facts for ``PruneOutcome.info`` once the kept counts are known."""


class Allocator(Part, Protocol):
    """``needs_grid`` (optional, default False): whether it reads :meth:`Selection.grid`
    (then the compensator must implement :meth:`Compensator.grid`)."""

    def check(self, task: PruneTask, options: Options) -> None:
        """One-line errors for what depends on the task (before any work)."""

    def holdout(self, task: PruneTask, options: Options) -> int:
        """How many calibration images (the last ones) this allocator reserves for itself
        (the other parts never see them); 0: none."""

    def floor(self, sel: Selection, options: Options) -> np.ndarray:
        """[G] the smallest kept counts it may choose (before scoring; raises
        :class:`hobs_jax.allocation.Unreachable` when the target cannot be met)."""

    def allocate(self, sel: Selection, options: Options) -> Allocation:
        """Kept counts (>= the floor) from ``sel.scores``."""


class Compensator(Part, Protocol):
    def groups(self, sel: Selection, options: Options) -> Sequence[int] | None:
        """The groups that may be pruned (None: every group of the task's cost model)."""

    def compensate(self, sel: Selection, plan, removed: Mapping[int, np.ndarray],
                   options: Options) -> tuple[Mapping, dict]:
        """(full-size variables for ``plan``, facts for ``PruneOutcome.info``);
        ``removed``: group id -> removed channels."""

    def grid(self, sel: Selection, gid: int, order: np.ndarray, counts: np.ndarray,
             options: Options) -> dict[tuple[str, str], np.ndarray]:
        """Optional (allocators that search need it): see :meth:`Selection.grid`."""
