"""Stages ``calibrate`` and ``prune``.

``calibrate`` fixes the calibration examples (a seeded sample of the training split,
preprocessed without augmentation) so every method sees the same data. ``prune`` builds
the channel graph and the exact cost model of the dense network, runs the configured
method from the registry, cuts the network (``apply_plan``), measures the accuracy right
after pruning, re-estimates BatchNorm statistics on the calibration data, checks the
target and finite outputs, and saves the pruned model with its plan. The method's parts
may keep resumable state under ``prune/method_state`` (``PruneTask.workdir``) and its
artifacts (plots) are written into the stage directory, whatever the method.
"""

from __future__ import annotations

import itertools
import os

import jax
import numpy as np

from hobs_jax.pipeline.context import Context, log


def run_calibrate(ctx: Context) -> dict:
    c = ctx.config
    from hobs_jax.data import sample_indices

    idx = sample_indices(ctx.source.size(c.calibrate.split), c.calibrate.num_images, c.seed)
    n = len(idx)
    path = os.path.join(ctx.workdir.stage_dir("calibrate"), "indices.npy")
    np.save(path, idx)
    return {"split": c.calibrate.split, "num_images": int(n), "indices": path}


def calibration(ctx: Context):
    """The :class:`~hobs_jax.methods.Calibration` set fixed by ``calibrate``."""
    from hobs_jax.methods import Calibration

    c = ctx.config
    rec = ctx.workdir.done("calibrate")
    if rec is None:
        raise ValueError("the prune stage needs the calibrate stage (add it to --config.stages)")
    idx = np.load(rec["outputs"]["indices"])
    images, labels = ctx.source.batch(c.calibrate.split, idx, train=False)
    return Calibration(np.asarray(images, np.float32), np.asarray(labels, np.int32))


def _accuracy(ctx: Context, model, variables) -> float:
    return float(ctx.evaluate(model, variables, desc="one-shot eval")["top1"])


class MethodTraining:
    """The narrow training callback methods may use (DepGraph's sparse-learning phase, the
    rounds of JTP, BilevelPruning and StructAlign): trains the unpruned network with the
    ``finetune`` recipe for ``steps`` steps, with an extra loss or gradient
    transformation, resumably under ``prune/method_training`` (call i > 0 of one stage
    run under ``prune/method_training_<i>``, with data seed ``finetune.seed + i``: every
    round keeps its own checkpoints, so a restarted stage resumes each finished round from
    them, and sees its own batches). With ``finetune.kd.enabled`` it distils from the
    trained dense network, as the finetune stage does.

    The stage's result then depends on the ``finetune`` section too: the first call marks
    the stage's start with it (a stopped stage resumes only with the same values), and
    ``used`` tells the stage to record it (``depends_on``)."""

    def __init__(self, ctx: Context):
        self.ctx, self.calls, self.used = ctx, itertools.count(), False
        self._teacher = None  # the dense network, loaded once for every distilling round

    def __call__(self, variables, steps, extra_loss=None, extra_transform=None):
        from hobs_jax.train import Teacher, fit

        ctx = self.ctx
        c = ctx.config
        section = c.finetune.copy_and_resolve_references()
        n = next(self.calls)
        if not self.used and jax.process_index() == 0:
            ctx.workdir.start("prune", c, also=("finetune",))
        self.used = True
        with section.unlocked():
            # Each call its own data order (a round must not see the first batches again).
            section.steps, section.epochs, section.seed = int(steps), 0.0, int(section.seed) + n
        model = ctx.dense_model()
        if section.kd.enabled and self._teacher is None:
            _, dense_vars, _ = ctx.load_model("train")
            self._teacher = Teacher(model.apply, dense_vars)
        teacher = self._teacher if section.kd.enabled else None
        result = fit(model, variables, ctx.train_loader(section), section,
                     os.path.join(ctx.workdir.stage_dir("prune"), "method_training" + (f"_{n}" if n else "")),
                     extra_loss=extra_loss, extra_transform=extra_transform, teacher=teacher).completed()
        return result.variables


def _runtimes(c) -> tuple[str, ...]:
    """The runtimes the network is pruned for: the benchmark stage's; ``align='auto'``
    takes the quantum of the first (the one served: XLA by default). Aligning for all of
    them (their least common multiple, 16 for XLA and ONNX Runtime on AVX-512) cost the
    quickstart's ResNet-20 1.6 points of one-shot accuracy against 8
    (docs/results/aligned_allocation.md)."""
    from hobs_jax.pipeline.benchmark_stage import runtimes_of

    return runtimes_of(c)[:1]


def latency_table_for(c, prunable, input_shape, runtimes) -> tuple[dict | None, dict | None]:
    """(table, facts) for ``prune.metric='latency'``: ``prune.latency.table`` when given,
    else the cached table of this network in ``prune.latency.runtime`` (default: the first
    benchmark runtime) at ``prune.latency.batch`` (default: the largest benchmark batch),
    measured and cached when missing; the same for a method whose allocator ranks by latency
    under a MACs/params target (``prune.<method>.rank='latency'``); (None, None) otherwise."""
    import json

    from hobs_jax.pipeline.config import batch_sizes

    section = c.prune.get(c.prune.method)
    ranks = section is not None and section.get("rank", "metric") == "latency"
    if c.prune.metric != "latency" and not ranks:
        return None, None
    lat = c.prune.latency
    if lat.table:
        try:
            with open(lat.table) as f:
                table = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"prune.latency.table={lat.table!r}: cannot read it ({e})") from None
        source = lat.table
    else:
        from hobs_jax.methods.latency_table import cached_table

        runtime = lat.runtime or runtimes[0]
        if runtime not in ("xla", "onnxruntime"):
            raise ValueError(f"prune.latency.runtime: tables are measured in xla or onnxruntime, not {runtime!r}")
        batch = int(lat.batch) or max(batch_sizes(c))
        table = cached_table(prunable, input_shape=input_shape, runtime=runtime, batch=batch,
                             threads=int(c.benchmark.threads), clock=str(c.benchmark.clock), points=int(lat.points),
                             rounds=int(lat.rounds),
                             iters=int(lat.iters))
        source = "cache"
    return table, {"source": source, "runtime": table.get("runtime", "xla"), "batch": table.get("batch"),
                   "threads": table.get("threads"), "device": table.get("device"),
                   "dense_ms": 1e3 * float(table.get("dense_seconds", 0.0))}


def _run_measured(ctx: Context, task, table_info: dict):
    """``prune.latency.measure`` > 0: the method with its latency target closed by measurement
    (:func:`hobs_jax.methods.measured.run_measured`), each candidate timed against the
    trained dense network in the table's runtime and batch, with the benchmark section's
    threads and clock (those the table was measured with); candidates are exported to a
    temporary directory that is removed afterwards. The timings are journaled in
    ``prune/method_state/latency_feedback.json``: a stage stopped by SIGTERM (after the
    round being timed) or killed resumes from the recorded rounds and ends where an
    uninterrupted run would (:class:`hobs_jax.methods.measured.MeasureJournal`)."""
    import tempfile

    from hobs_jax.methods.measured import bench_measure, cut_and_save, run_measured

    c = ctx.config
    with tempfile.TemporaryDirectory(prefix="hobs_latency_feedback_") as scratch:
        measure = bench_measure(ctx.model_dir("train"), runtime=table_info["runtime"], batch=int(table_info["batch"]),
                                scratch=scratch, export=cut_and_save(task, ctx.export),
                                input_shape=ctx.input_shape[1:4], threads=int(c.benchmark.threads),
                                clock=str(c.benchmark.clock),
                                journal=os.path.join(task.workdir, "latency_feedback.json") if task.workdir else None)
        return run_measured(c.prune.method, task, measure, tol=float(c.prune.latency.measure_tol),
                            rounds=int(c.prune.latency.measure), log=log.info)


def run(ctx: Context) -> dict:
    import dataclasses

    from hobs_jax.methods import get_method, make_task
    from hobs_jax.methods import run as run_method
    from hobs_jax.stats import reestimate_bn

    c = ctx.config
    _, variables, _ = ctx.load_model("train")
    spec = get_method(c.prune.method)
    calib = calibration(ctx) if (spec.needs_data or c.prune.bn_recalibrate) else None
    stage = os.path.join(ctx.workdir.root, "prune")  # created by the first write, not before
    runtimes = _runtimes(c)
    prunable = ctx.prunable(variables)
    table, table_info = latency_table_for(c, prunable, ctx.input_shape, runtimes)
    # 'auto': the quantum of the served runtime (the first benchmark runtime).
    task = make_task(c.prune.method, prunable, target=c.prune.target,
                     metric=c.prune.metric, align=c.prune.align, runtimes=runtimes, input_shape=ctx.input_shape,
                     calib=calib, options=c.prune[c.prune.method], seed=c.seed,
                     finetune=(training := MethodTraining(ctx)), latency=table)
    # Parts that search or train keep resumable state here: it resumes with the stage.
    task = dataclasses.replace(task, workdir=os.path.join(stage, "method_state"))
    loop = None
    if table_info is not None and c.prune.metric == "latency" and int(c.prune.latency.measure) > 0:
        result, loop = _run_measured(ctx, task, table_info)
    else:
        result = run_method(c.prune.method, task)
    pruned, pvars, outcome = result.model, result.variables, result.outcome
    out = {"method": c.prune.method, "macs_ratio": result.macs_ratio,
           "params_ratio": result.params_ratio, "align": str(c.prune.align), "quantum": int(task.round_to),
           "quantum_runtimes": list(runtimes),
           "groups_pruned": sum(1 for g, idx in outcome.plan.keep
                                if len(idx) < task.graph.group(g).size),
           "info": outcome.info}
    if training.used:  # the method trained through the finetune section: the result depends on it
        out["depends_on"] = ["finetune"]
    if task.latency is not None:
        keep = task.cost.keep_vector({g: len(idx) for g, idx in outcome.plan.keep})
        out["latency_table"] = table_info
        out["latency_ratio"] = float(task.latency.ratio(keep))
    if loop is not None:  # measured: what the table was asked and what each round measured
        out["latency_feedback"] = loop.to_dict()
    if c.prune.evaluate_oneshot:
        out["acc_oneshot"] = _accuracy(ctx, pruned, pvars)
    if c.prune.bn_recalibrate and "batch_stats" in pvars and calib is not None:  # calib exists then
        pvars = reestimate_bn(pruned, pvars, (x for x, _ in calib.batches(c.calibrate.batch_size)))
        if c.prune.evaluate_oneshot:
            out["acc_bn_recalibrated"] = _accuracy(ctx, pruned, pvars)
    os.makedirs(stage, exist_ok=True)
    out["artifacts"] = [p for name, write in outcome.artifacts.items()
                        for p in write(os.path.join(stage, name))]
    with open(os.path.join(stage, "plan.json"), "w") as f:
        f.write(outcome.plan.to_json())
    out["model_dir"] = ctx.save_model("prune", pruned, pvars, plan=outcome.plan)
    log.info("prune: %s kept %.4f of the MACs; one-shot top-1 %s", c.prune.method,
             out["macs_ratio"], out.get("acc_oneshot"))
    return out
