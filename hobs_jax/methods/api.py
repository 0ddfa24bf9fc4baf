"""Run a registered method on any network in one call (what the pipeline's prune stage,
the contract test and the experiments use).

    result = prune("hobs", "resnet56", variables, target=0.5, calib=calib)      # zoo
    result = prune("hobs", MyNet(), variables, target=0.5, calib=calib)         # any linen module
    result = prune("hobs", my_nnx_net, target=0.5, calib=calib)                 # an NNX module
    result = prune("hobs", prunable, target=0.5, calib=calib)                   # a Prunable
    result.model, result.variables, result.outcome.plan, result.macs_ratio
    result.nnx                                                                   # NNX: the pruned module

A module outside the zoo needs its input shape: ``input_shape=`` or, when calibration
data is given, the shape of its images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import macs
from hobs_jax.methods.base import Calibration, FinetuneFn, PruneOutcome, PruneTask
from hobs_jax.methods.registry import get_method


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """The pruned network and how it was obtained.

    ``model`` / ``variables``: the pruned network as ``model.apply(variables, x)`` runs
    it (a zoo module; for a user's linen module its adapter; for an NNX module its
    adapter, see :attr:`nnx`); ``prunable`` the same as a
    :class:`~hobs_jax.models.Prunable`."""

    model: Any
    variables: Mapping
    outcome: PruneOutcome
    macs_ratio: float
    params_ratio: float
    task: PruneTask
    prunable: Any = None

    @property
    def nnx(self):
        """The pruned network as an ordinary ``nnx.Module`` (NNX networks only)."""
        return self.prunable.to_nnx()


def make_task(method: str, model: Any, variables: Mapping | None = None, *, target: float,
              metric: str = "macs", round_to: int = 1, input_shape: tuple[int, ...] | None = None,
              calib: Calibration | None = None, options: Mapping | None = None, seed: int = 0,
              finetune: FinetuneFn | None = None, graph=None, align: int | str | None = None,
              runtimes: tuple[str, ...] = ("xla",), latency: Any = None) -> PruneTask:
    """A :class:`PruneTask` for ``method`` on ``model`` (graph and exact cost model built
    here unless ``graph`` is given).

    ``model``: a zoo name (built at the widths of ``variables``), a zoo module, a linen
    module with its ``variables``, an NNX module, a ``(module, variables)`` pair or a
    :class:`~hobs_jax.models.Prunable`. ``input_shape`` defaults to the calibration
    images' (one example), else the zoo's.

    Width alignment (every allocator then allocates multiples of the quantum, unless a
    group keeps all its channels; the target search runs on that aligned grid):
    ``round_to`` an explicit quantum, or ``align``: ``'off'`` (``round_to``), an int, or
    ``'auto'``: the quantum that suits every runtime of ``runtimes`` (default XLA, the
    runtime the network is served in; naming several takes the least common multiple of
    their quanta) on this device
    (:func:`hobs_jax.allocation.alignment.runtimes_quantum`), halved while the target is
    unreachable at it (:func:`hobs_jax.allocation.reachable_quantum`: a group no wider
    than the quantum cannot be pruned at it). The quantum used is ``task.round_to``.

    ``metric='latency'`` needs ``latency``: a table (dict), its path or a
    :class:`~hobs_jax.allocation.latency.LatencyBudget`
    (:func:`hobs_jax.methods.latency_table.cached_table`), checked against this network
    and device in one line."""
    from hobs_jax.allocation import build_cost_model, reachable_quantum
    from hobs_jax.allocation.alignment import parse_align, runtimes_quantum
    from hobs_jax.graph import as_prunable, graph_of

    spec = get_method(method)
    if spec.needs_data and calib is None:
        raise ValueError(f"method {method!r} needs calibration data (calib=None given)")
    if input_shape is None and calib is not None:
        input_shape = (1,) + tuple(np.shape(calib.images)[1:])
    p = as_prunable(model, variables, input_shape)
    if spec.needs_data and p.kind == "linen":
        _refuse_resized(method, p)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to={round_to!r}: must be an int >= 1")
    mode = parse_align("off" if align is None else align)
    if metric not in ("macs", "params", "latency"):
        raise ValueError(f"metric={metric!r}: use 'macs', 'params' or 'latency'")
    if metric == "latency" and latency is None:
        raise ValueError("metric='latency' needs latency= (a latency table, its path or a LatencyBudget; "
                         "hobs_jax.methods.latency_table.cached_table measures one)")
    graph = graph or graph_of(p)
    cost = build_cost_model(p, graph)
    opts = spec.options(options)  # typed and validated now: a bad option fails before any work
    task = PruneTask(prunable=p, variables=p.variables, graph=graph, cost=cost, target=target, metric=metric,
                     round_to=round_to, input_shape=p.input_shape, calib=calib, options=opts, seed=seed,
                     finetune=finetune)
    if latency is not None:
        from hobs_jax.methods.latency_table import budget_of

        task = dataclasses.replace(task, latency=budget_of(latency, task))
    if mode != "off":
        q = mode if isinstance(mode, int) else runtimes_quantum(tuple(runtimes))[0]
        if mode == "auto" and isinstance(target, (int, float)) and 0 < target < 1:
            q = reachable_quantum(task.latency if metric == "latency" else cost, float(target), metric, q)
        task = dataclasses.replace(task, round_to=int(q))
    return task


def _refuse_resized(method: str, p) -> None:
    """Methods that trace layers see a rebuilt linen module's layers as constructed
    before the rebuilt ones (docs/graph.md); refuse rather than mis-measure."""
    from hobs_jax.graph.prunable import resized

    if resized(p.module, p.variables, p.input_shape):
        raise ValueError(f"method {method!r} traces the layers of {p.label}, which runs at other widths than its "
                         f"code declares (a pruned network): prune the original module to the combined target")


def run(method: str, task: PruneTask) -> PruneResult:
    """Run ``method`` on ``task``, cut the network, and check the result: the target is met
    within 1% (exact count) and outputs are finite. One-line ``ValueError`` otherwise."""
    return checked_result(method, task, get_method(method).prune(task))


def checked_result(method: str, task: PruneTask, outcome, target: float | None = None) -> PruneResult:
    """The network ``outcome`` cuts from ``task``'s, checked as :func:`run` checks it: its
    ratio in the budget it was met in is within 1% of ``target`` (default ``task.target``;
    a measured latency budget passes the fraction it asked of the table) and its outputs are
    finite. One-line ``ValueError`` otherwise."""
    from hobs_jax.allocation import TOLERANCE
    from hobs_jax.graph import apply_plan

    target = float(task.target if target is None else target)
    pruned = apply_plan(task.prunable, outcome.variables, outcome.plan, graph=task.graph)
    before = macs.count(task.model, task.variables, task.input_shape)
    after = macs.count(pruned.module, pruned.variables, task.input_shape)
    mr, pr = after.macs / before.macs, after.params / before.params
    # The budget the allocation was met in: the task's metric, or the one the outcome
    # declares (R-SPAR's latency table), checked in that budget's own terms.
    kind, declared = outcome.budget or (task.metric, None)
    got = mr if kind == "macs" else pr if kind == "params" else declared
    if kind == "latency" and task.latency is not None:  # re-evaluated from the plan itself
        got = task.latency.ratio(task.cost.keep_vector({g: len(idx) for g, idx in outcome.plan.keep}))
    if got is None:
        raise ValueError(f"method {method!r} met its budget in {kind!r} without declaring the ratio it kept")
    if abs(got / target - 1) > TOLERANCE:
        raise ValueError(f"method {method!r} kept {got:.4f} of the {kind}, target "
                         f"{target:g} (tolerance {TOLERANCE:.0%})")
    probe = (task.calib.images[:4] if task.calib is not None
             else np.zeros((2,) + tuple(task.input_shape[1:]), np.float32))
    if not bool(_all_finite(pruned.module)(pruned.variables, jnp.asarray(probe))):
        raise ValueError(f"method {method!r} produced a network with non-finite outputs")
    return PruneResult(pruned.module, pruned.variables, outcome, mr, pr, task, pruned)


@functools.lru_cache(maxsize=16)
def _all_finite(model):
    """jit(variables, x) -> whether ``model``'s eval-mode outputs are all finite; cached per
    module configuration, so pruning the same architecture again does not recompile."""
    return jax.jit(lambda v, x: jnp.all(jnp.isfinite(model.apply(v, x, train=False))))


def prune(method: str, model: Any, variables: Mapping | None = None, **kwargs) -> PruneResult:
    """:func:`make_task` + :func:`run`: ``prune("hobs", model, variables, target=0.5,
    calib=calib)`` for any network (see :func:`make_task` for ``model``)."""
    return run(method, make_task(method, model, variables, **kwargs))
