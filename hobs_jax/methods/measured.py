"""A latency budget met by measurement: any composed method (one selection, then one
allocation per budget) run under ``metric='latency'`` with the fraction asked of its
latency table corrected until the pruned network's *measured* time is on target
(:mod:`hobs_jax.allocation.feedback` has the loop and why it is needed).

    measure = bench_measure(dense_dir, runtime="onnxruntime", batch=64, scratch=tmp, export=save)
    result, loop = run_measured("hobs", task, measure)   # task: make_task(..., metric="latency")

``measure`` may be any ``outcome -> pruned / dense time`` callable; :func:`bench_measure`
times the two networks in one interleaved ``hobs_jax.bench`` run (one thread, CPU time per
call, so other jobs on a shared machine do not move the ratio). The pipeline's prune stage
uses it when ``prune.latency.measure`` > 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hobs_jax.allocation import feedback


def allocate_measured(spec, sel, measure: Callable[[Any], float], target: float, *, tol: float = feedback.TOLERANCE,
                      rounds: int = 4, log: Callable[[str], None] | None = None) -> feedback.Result:
    """The loop on an existing selection ``sel`` (``spec.select(task)``), which serves every
    round whose allocation stays above its floor (a lower budget selects again): each round
    allocates at the asked fraction and finishes the network. The result's candidate is
    ``(allocation, outcome)`` of the round measured closest to ``target``."""
    if sel.task.metric != "latency" or sel.task.latency is None:
        raise ValueError(f"{spec.name}: a measured latency budget needs metric='latency' and a latency table "
                         f"(got metric={sel.task.metric!r})")
    current = [sel]

    def allocate(asked: float):
        s = current[0].with_task(target=asked)
        allocated = spec.allocate(s)
        if np.any(np.asarray(allocated.keep) < s.floor):
            # An allocator whose floor is its own answer (uniform) or a removal path that
            # stopped above this budget: select again at it (scores of one selection serve
            # only the budgets its floor reaches).
            current[0] = spec.select(dataclasses.replace(sel.task, target=asked))
            s = current[0]
            allocated = spec.allocate(s)
        return allocated, spec.finish(s, allocated.keep, allocated)

    return feedback.meet_measured(allocate, lambda cand: measure(cand[1]), target, tol=tol, rounds=rounds,
                                  log=log)


def run_measured(method: str, task, measure: Callable[[Any], float], *, tol: float = feedback.TOLERANCE,
                 rounds: int = 4, log: Callable[[str], None] | None = None):
    """``(PruneResult, feedback.Result)``: :func:`hobs_jax.methods.api.run` with the task's
    latency target met by measurement. The result is checked like ``run``'s, against the
    fraction finally asked of the table (the allocator's own target); ``task.target`` is the
    measured goal. One-line ``ValueError`` for a method without a separate allocation."""
    from hobs_jax.methods.api import checked_result
    from hobs_jax.methods.registry import get_method

    spec = get_method(method)
    if not all(hasattr(spec, k) for k in ("select", "allocate", "finish")):
        raise ValueError(f"method {method!r} has no separate allocation step, so a measured latency budget "
                         "cannot re-allocate it; use a composed method (hobs, magnitude, ...)")
    loop = allocate_measured(spec, spec.select(task), measure, float(task.target), tol=tol, rounds=rounds, log=log)
    _, outcome = loop.candidate
    return checked_result(method, task, outcome, target=loop.best.asked), loop


def cut_and_save(task, save: Callable[..., Any]) -> Callable[[str, Any], None]:
    """``export(path, outcome)`` for :func:`bench_measure`: cuts ``task``'s network by the
    outcome's plan and calls ``save(path, module, host variables, plan)`` (e.g. the pipeline
    context's ``export``)."""
    import jax

    from hobs_jax.graph import apply_plan

    def export(path: str, outcome) -> None:
        net = apply_plan(task.prunable, outcome.variables, outcome.plan, graph=task.graph)
        save(path, net.module, jax.device_get(net.variables), outcome.plan)

    return export


def bench_measure(dense_dir: str, *, runtime: str, batch: int, scratch: str,
                  export: Callable[[str, Any], Any], input_shape: tuple[int, int, int] | None = None,
                  rounds: int = 3, iters: int = 24, threads: int = 1, clock: str = "cpu") -> Callable[[Any], float]:
    """``outcome -> pruned p50 / dense p50`` in ``runtime`` at ``batch``: ``export(path,
    outcome)`` saves the pruned network (``hobs_jax.export.save``) under ``scratch/round_K``
    and one interleaved ``hobs_jax.bench`` run times it against the saved dense network at
    ``dense_dir`` (``rounds`` x ``iters`` calls each). Default: one thread, CPU time per call
    on the CPU (robust on a shared machine); ``clock='wall'`` times wall clock on the
    suite's default device (a GPU when one is visible), as the table was measured."""
    from hobs_jax.bench import ModelSpec, Options, run_suite, speedups

    dense = ModelSpec.from_saved(dense_dir, label="dense", input_shape=input_shape)
    timing = Options(batch_sizes=(int(batch),), warmup=2, iters=int(iters), rounds=int(rounds), threads=int(threads),
                     clock=clock, devices=("cpu",) if clock == "cpu" else None)
    count = [0]

    def measure(outcome) -> float:
        count[0] += 1
        path = os.path.join(scratch, f"round_{count[0]}")
        export(path, outcome)
        model = ModelSpec.from_saved(path, label="candidate", input_shape=input_shape)
        got = speedups(run_suite([dense, model], [runtime], timing, baseline="dense", log=None).rows,
                       "dense", "candidate")
        if len(got) != 1 or not got[0].get("speedup"):
            raise RuntimeError(f"timing round {count[0]} in {runtime} at batch {batch} gave no speedup")
        return 1.0 / float(got[0]["speedup"])

    return measure


__all__ = ["allocate_measured", "bench_measure", "cut_and_save", "run_measured"]
