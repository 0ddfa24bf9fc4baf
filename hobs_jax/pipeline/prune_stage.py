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

import numpy as np

from hobs_jax.pipeline.context import Context, log


def run_calibrate(ctx: Context) -> dict:
    c = ctx.config
    n_split = ctx.source.size(c.calibrate.split)
    n = min(c.calibrate.num_images, n_split)
    idx = np.sort(np.random.default_rng(c.seed).permutation(n_split)[:n])
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
    from hobs_jax.train import evaluate

    return float(evaluate(model, variables, ctx.eval_loader(), desc="one-shot eval")["top1"])


def finetune_fn(ctx: Context):
    """The narrow training callback methods may use (DepGraph's sparse-learning phase, the
    rounds of JTP, BilevelPruning and StructAlign): trains the unpruned network with the
    ``finetune`` recipe for ``steps`` steps, with an extra loss or gradient
    transformation, resumably under ``prune/method_training`` (call i > 0 of one stage
    run under ``prune/method_training_<i>``, with data seed ``finetune.seed + i``: every
    round keeps its own checkpoints, so a restarted stage resumes each finished round from
    them, and sees its own batches)."""
    calls = itertools.count()

    def train(variables, steps, extra_loss=None, extra_transform=None):
        from hobs_jax.pipeline.train_stage import stop_if_preempted
        from hobs_jax.train import fit

        c = ctx.config
        section = c.finetune.copy_and_resolve_references()
        n = next(calls)
        with section.unlocked():
            # Each call its own data order (a round must not see the first batches again).
            section.steps, section.epochs, section.seed = int(steps), 0.0, int(section.seed) + n
        model = ctx.dense_model()
        result = fit(model, variables, ctx.train_loader(section), section,
                     os.path.join(ctx.workdir.stage_dir("prune"), "method_training" + (f"_{n}" if n else "")),
                     extra_loss=extra_loss, extra_transform=extra_transform)
        stop_if_preempted(result.metrics)
        return result.variables
    return train


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
    task = make_task(c.prune.method, ctx.prunable(variables), target=c.prune.target,
                     metric=c.prune.metric, round_to=c.prune.round_to, input_shape=ctx.input_shape,
                     calib=calib, options=c.prune[c.prune.method], seed=c.seed,
                     finetune=finetune_fn(ctx))
    # Parts that search or train keep resumable state here: it resumes with the stage.
    task = dataclasses.replace(task, workdir=os.path.join(stage, "method_state"))
    result = run_method(c.prune.method, task)
    pruned, pvars, outcome = result.model, result.variables, result.outcome
    out = {"method": c.prune.method, "macs_ratio": result.macs_ratio,
           "params_ratio": result.params_ratio,
           "groups_pruned": sum(1 for g, idx in outcome.plan.keep
                                if len(idx) < task.graph.group(g).size),
           "info": outcome.info}
    if c.prune.evaluate_oneshot:
        out["acc_oneshot"] = _accuracy(ctx, pruned, pvars)
    if c.prune.bn_recalibrate and "batch_stats" in pvars:
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
