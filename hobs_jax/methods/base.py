"""What every pruning method reads and returns: :class:`PruneTask` -> :class:`PruneOutcome`.

A method is a composition of parts (:mod:`hobs_jax.methods.parts`: a scorer, an
allocator, a compensator, optionally a training-time regularizer); the shared machinery
does the rest once: the channel groups (:mod:`hobs_jax.graph`), cost models and target
searches (:mod:`hobs_jax.allocation`), surgery (:func:`hobs_jax.graph.apply_plan`), BN
re-estimation (:mod:`hobs_jax.stats.bn`).

    outcome = get_method("hobs").prune(task)        # task: PruneTask
    pruned = apply_plan(task.prunable, outcome.variables, outcome.plan)   # a Prunable
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration examples: ``images`` [N, H, W, C] float32 (preprocessed, not augmented)
    and ``labels`` [N] int32 (methods that need no labels ignore them)."""

    images: np.ndarray
    labels: np.ndarray

    def batches(self, batch_size: int):
        """Consecutive [<=batch_size, H, W, C] slices (the last may be shorter)."""
        for i in range(0, len(self.images), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]


class FinetuneFn(Protocol):
    """The narrow training callback some methods need (DepGraph's sparse-learning phase):
    train the *unpruned* model for ``steps`` with an extra loss term; returns variables."""

    def __call__(self, variables: dict, steps: int, extra_loss: Callable | None = None,
                 extra_transform: Any = None) -> dict: ...


@dataclasses.dataclass(frozen=True)
class PruneTask:
    """Everything a method may use.

    Attributes:
      prunable: the unpruned network (:class:`~hobs_jax.models.Prunable`: a zoo model,
        a user's linen module or an NNX module); ``task.model`` is its module (what
        ``model.apply(variables, x, train=False)`` runs), ``task.name`` its name for
        messages.
      variables: its variables {'params', 'batch_stats'?} (host arrays).
      graph: its channel groups; ``cost`` the exact cost model over the prunable groups;
        architecture facts a method relies on are read from the graph (e.g.
        :func:`hobs_jax.graph.bn_relu_groups`), never from the name.
      target: kept fraction of ``metric`` ('macs' | 'params'), in (0, 1).
      round_to: kept counts are multiples of this (unless a group keeps all).
      input_shape: [1, H, W, C] the costs are counted at.
      calib: calibration data (None for data-free methods).
      options: the method's typed options (:class:`hobs_jax.methods.MethodOptions`, built
        and validated by ``make_task``; a plain mapping or config section is accepted
        too and validated when the method runs).
      seed: for any randomness (methods must be deterministic given it).
      finetune: see :class:`FinetuneFn` (None when no training data is wired up).
      workdir: a directory where parts may keep resumable state (R-SPAR's search
        checkpoints, under ``<workdir>/<part>``); None keeps nothing.
    """

    prunable: Any
    variables: Mapping
    graph: Any
    cost: Any
    target: float
    metric: str
    round_to: int
    input_shape: tuple[int, ...]
    calib: Calibration | None
    options: Any
    seed: int = 0
    finetune: FinetuneFn | None = None
    workdir: str | None = None


    @property
    def model(self) -> Any:
        """The module of the unpruned network (``model.apply(variables, x, train=False)``)."""
        return self.prunable.module

    @property
    def name(self) -> str:
        """The network's name in messages: the zoo name or ``package.module.Class``."""
        return self.prunable.label

    @property
    def model_name(self) -> str | None:
        """The zoo name, or None outside the zoo (kept for readers of older code; test
        architecture facts on ``graph``, not on names)."""
        return self.prunable.name


#: Writes one artifact of an outcome (a plot, a table) at ``prefix`` (a path without
#: extension, e.g. ``<stage dir>/rspar_allocation``); returns the paths written.
ArtifactWriter = Callable[[str], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class PruneOutcome:
    """A method's answer.

    Attributes:
      plan: the :class:`~hobs_jax.graph.PrunePlan`.
      variables: full-size variables to slice (compensated where the method compensates;
        else the input variables).
      info: JSON-able facts (kept counts, scores, timings; a part's own facts under its name).
      artifacts: name -> writer of a file the outcome can produce (R-SPAR's allocation
        chart and learning curve); callers that keep files (the pipeline) call each
        writer with ``<dir>/<name>``.
      budget: (kind, kept fraction) of the budget the allocation was met in when that is
        not the task's metric (R-SPAR's latency table); None: the task's metric.
    """

    plan: Any
    variables: Mapping
    info: dict = dataclasses.field(default_factory=dict)
    artifacts: Mapping[str, ArtifactWriter] = dataclasses.field(default_factory=dict)
    budget: tuple[str, float] | None = None
