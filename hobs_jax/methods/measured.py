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

Timings are the loop's only non-deterministic input, so :func:`bench_measure` can keep
them in a journal (``journal=PATH``): each candidate's measured fraction is written, keyed
by its pruning plan, before the next round starts, and a rerun after an interruption
(SIGTERM, kill -9) replays the recorded rounds instead of timing them again. The
selection and the allocations are deterministic, so the rerun asks the same fractions,
finds the same plans and ends where the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hobs_jax import faults, interrupt
from hobs_jax.allocation import feedback

logger = logging.getLogger(__name__)


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
        check_table_met(spec.name, s.task.latency, allocated.keep, asked)
        return allocated, spec.finish(s, allocated.keep, allocated)

    return feedback.meet_measured(allocate, lambda cand: measure(cand[1]), target, tol=tol, rounds=rounds,
                                  log=log)


def check_table_met(name: str, table, keep, asked: float) -> None:
    """One-line ``ValueError`` unless ``keep`` [G] (cost-model group order) keeps ``asked``
    of ``table``'s time within the allocators' tolerance: a candidate that missed the
    fraction it was asked would be timed, and the loop's correction of the ask would then
    steer nothing (the final check would refuse the network only after every round)."""
    from hobs_jax.allocation import TOLERANCE

    got = float(table.ratio(np.asarray(keep, np.float64)))
    if abs(got / asked - 1) > TOLERANCE:
        raise ValueError(f"{name}: its allocation keeps {got:.4f} of the latency table where {asked:.4f} was "
                         f"asked (tolerance {TOLERANCE:.0%}); a measured budget needs an allocator that meets "
                         "the table")


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


class MeasureJournal:
    """Measured time fractions of candidate networks, kept in a JSON file so that an
    interrupted measured loop resumes without timing its finished rounds again.

    An entry is keyed by the sha256 of the candidate's pruning plan (its kept channels:
    the network's structure; the weights follow deterministically from the selection);
    the file also holds the timing ``setting`` (runtime, batch, threads, clock, ...), and a
    journal written under another setting is set aside (renamed ``.stale``), not reused.
    Every write is atomic (temporary file, fsync, rename).
    """

    def __init__(self, path: str, setting: dict):
        self.path = path
        self.setting = json.loads(json.dumps(setting, sort_keys=True, default=str))
        self.entries: dict[str, float] = {}
        if not os.path.exists(path):
            return
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            data = None
            logger.warning("latency feedback: journal %s is unreadable (%s); timing every round again", path, e)
        if isinstance(data, dict) and data.get("setting") == self.setting:
            self.entries = {str(k): float(v) for k, v in data.get("measured", {}).items()}
        elif data is not None:
            logger.warning("latency feedback: journal %s was written with other timing settings; set aside as %s.stale",
                        path, path)
            os.replace(path, path + ".stale")

    @staticmethod
    def key(outcome) -> str:
        """The candidate's identity: the sha256 of its plan's JSON."""
        return hashlib.sha256(outcome.plan.to_json().encode()).hexdigest()

    def get(self, outcome) -> float | None:
        return self.entries.get(self.key(outcome))

    def put(self, outcome, fraction: float) -> None:
        self.entries[self.key(outcome)] = float(fraction)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"setting": self.setting, "measured": self.entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def bench_measure(dense_dir: str, *, runtime: str, batch: int, scratch: str,
                  export: Callable[[str, Any], Any], input_shape: tuple[int, int, int] | None = None,
                  rounds: int = 3, iters: int = 24, threads: int = 1, clock: str = "cpu",
                  journal: str | None = None) -> Callable[[Any], float]:
    """``outcome -> pruned p50 / dense p50`` in ``runtime`` at ``batch``: ``export(path,
    outcome)`` saves the pruned network (``hobs_jax.export.save``) under ``scratch/round_K``
    and one interleaved ``hobs_jax.bench`` run times it against the saved dense network at
    ``dense_dir`` (``rounds`` x ``iters`` calls each). Default: one thread, CPU time per call
    on the CPU (robust on a shared machine); ``clock='wall'`` times wall clock on the
    suite's default device (a GPU when one is visible), as the table was measured.

    ``journal``: a :class:`MeasureJournal` file; a candidate already in it is not timed
    again (module doc), and after each new timing is recorded a stop signal
    (:mod:`hobs_jax.interrupt`) ends the loop there, to resume on the next run."""
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

    if journal is None:
        return measure
    return journaled(measure, MeasureJournal(journal, {
        "dense": os.path.abspath(dense_dir), "runtime": runtime, "batch": int(batch),
        "input_shape": input_shape, "rounds": int(rounds), "iters": int(iters), "threads": int(threads),
        "clock": clock}))


def journaled(measure: Callable[[Any], float], book: MeasureJournal) -> Callable[[Any], float]:
    """``measure`` with its results kept in ``book``: a candidate already recorded returns
    its recorded fraction untimed; a new one is timed, recorded, and then a stop signal
    (:mod:`hobs_jax.interrupt`) raises there, so the loop stops at a round boundary with
    that round kept."""
    count = [0]

    def wrapped(outcome) -> float:
        count[0] += 1
        kept = book.get(outcome)
        if kept is not None:
            logger.info("latency feedback: round %d replayed from %s (measured %.4f)", count[0], book.path, kept)
            return kept
        fraction = float(measure(outcome))
        book.put(outcome, fraction)
        faults.point("latency_feedback.round", count[0])
        interrupt.check(f"in the measured latency loop after round {count[0]} (its timing is kept in {book.path}; "
                        "a rerun resumes from it)")
        return fraction

    return wrapped


__all__ = ["MeasureJournal", "allocate_measured", "bench_measure", "cut_and_save", "journaled", "run_measured"]
