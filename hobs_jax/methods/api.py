"""Run a registered method on a zoo model in one call (what the pipeline's prune stage,
the contract test and the experiments use).

    result = prune("hobs", "resnet56", variables, target=0.5, calib=calib)
    result.model, result.variables, result.outcome.plan, result.macs_ratio
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import macs, models
from hobs_jax.methods.base import Calibration, FinetuneFn, PruneOutcome, PruneTask
from hobs_jax.methods.registry import get_method


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """The pruned network and how it was obtained."""

    model: Any
    variables: Mapping
    outcome: PruneOutcome
    macs_ratio: float
    params_ratio: float
    task: PruneTask


def make_task(method: str, model_name: str, variables: Mapping, *, target: float,
              metric: str = "macs", round_to: int = 1, input_shape: tuple[int, ...] | None = None,
              calib: Calibration | None = None, options: Mapping | None = None, seed: int = 0,
              finetune: FinetuneFn | None = None, graph=None) -> PruneTask:
    """A :class:`PruneTask` for ``method`` on zoo model ``model_name`` at the widths of
    ``variables`` (graph and exact cost model built here unless ``graph`` is given)."""
    from hobs_jax.allocation import build_cost_model
    from hobs_jax.graph import build_graph

    spec = get_method(method)
    if spec.needs_data and calib is None:
        raise ValueError(f"method {method!r} needs calibration data (calib=None given)")
    widths, nc, ic = models.infer_widths(model_name, variables)
    model = models.build(model_name, widths=widths, num_classes=nc, in_channels=ic)
    if input_shape is None:
        input_shape = ((1,) + tuple(calib.images.shape[1:]) if calib is not None
                       else models.input_shape(model_name, 1, in_channels=ic))
    input_shape = (1,) + tuple(input_shape[1:])
    graph = graph or build_graph(model, variables, input_shape, name=model_name)
    cost = build_cost_model(model_name, graph, widths, input_shape, nc, ic)
    opts = spec.options(options)  # typed and validated now: a bad option fails before any work
    return PruneTask(model_name=model_name, model=model, variables=variables, graph=graph,
                     cost=cost, target=target, metric=metric, round_to=round_to,
                     input_shape=input_shape, calib=calib, options=opts, seed=seed,
                     finetune=finetune)


def run(method: str, task: PruneTask) -> PruneResult:
    """Run ``method`` on ``task``, cut the network, and check the result: the target is met
    within 1% (exact count) and outputs are finite. One-line ``ValueError`` otherwise."""
    from hobs_jax.allocation import TOLERANCE
    from hobs_jax.graph import apply_plan

    outcome = get_method(method).prune(task)
    pruned, pvars = apply_plan(task.model_name, outcome.variables, outcome.plan, graph=task.graph)
    before = macs.count(task.model, task.variables, task.input_shape)
    after = macs.count(pruned, pvars, task.input_shape)
    mr, pr = after.macs / before.macs, after.params / before.params
    # The budget the allocation was met in: the task's metric, or the one the outcome
    # declares (R-SPAR's latency table), checked in that budget's own terms.
    kind, declared = outcome.budget or (task.metric, None)
    got = mr if kind == "macs" else pr if kind == "params" else declared
    if abs(got / task.target - 1) > TOLERANCE:
        raise ValueError(f"method {method!r} kept {got:.4f} of the {kind}, target "
                         f"{task.target} (tolerance {TOLERANCE:.0%})")
    probe = (task.calib.images[:4] if task.calib is not None
             else np.zeros((2,) + tuple(task.input_shape[1:]), np.float32))
    if not bool(_all_finite(pruned)(pvars, jnp.asarray(probe))):
        raise ValueError(f"method {method!r} produced a network with non-finite outputs")
    return PruneResult(pruned, pvars, outcome, mr, pr, task)


@functools.lru_cache(maxsize=16)
def _all_finite(model):
    """jit(variables, x) -> whether ``model``'s eval-mode outputs are all finite; cached per
    module configuration, so pruning the same architecture again does not recompile."""
    return jax.jit(lambda v, x: jnp.all(jnp.isfinite(model.apply(v, x, train=False))))


def prune(method: str, model_name: str, variables: Mapping, **kwargs) -> PruneResult:
    """:func:`make_task` + :func:`run`."""
    return run(method, make_task(method, model_name, variables, **kwargs))
