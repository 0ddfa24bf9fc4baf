"""Stages ``calibrate`` and ``prune``.

``calibrate`` fixes the calibration examples (a seeded sample of the training split,
preprocessed without augmentation) so every method sees the same data. ``prune`` builds
the channel graph and the exact cost model of the dense network, runs the configured
method from the registry, cuts the network (``apply_plan``), measures the accuracy right
after pruning, re-estimates BatchNorm statistics on the calibration data, checks the
target and finite outputs, and saves the pruned model with its plan.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import macs, models
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


def run(ctx: Context) -> dict:
    from hobs_jax.allocation import TOLERANCE, build_cost_model
    from hobs_jax.graph import apply_plan, build_graph
    from hobs_jax.methods import PruneTask, get_method
    from hobs_jax.stats import reestimate_bn

    c = ctx.config
    model, variables, _ = ctx.load_model("train")
    spec = get_method(c.prune.method)
    calib = calibration(ctx) if (spec.needs_data or c.prune.bn_recalibrate) else None
    graph = build_graph(c.model, variables, ctx.input_shape)
    widths = dict(model.widths)
    cost = build_cost_model(c.model, graph, widths, ctx.input_shape, c.num_classes, c.in_channels)
    task = PruneTask(model_name=c.model, model=model, variables=variables, graph=graph, cost=cost,
                     target=c.prune.target, metric=c.prune.metric, round_to=c.prune.round_to,
                     input_shape=ctx.input_shape, calib=calib, options=c.prune[c.prune.method],
                     seed=c.seed)
    outcome = spec.prune(task)
    pruned, pvars = apply_plan(c.model, outcome.variables, outcome.plan, graph=graph)
    dense_cost = macs.count(model, variables, ctx.input_shape)
    new_cost = macs.count(pruned, pvars, ctx.input_shape)
    metric_ratio = (new_cost.macs / dense_cost.macs if c.prune.metric == "macs"
                    else new_cost.params / dense_cost.params)
    if abs(metric_ratio / c.prune.target - 1) > TOLERANCE:
        raise ValueError(f"method {c.prune.method!r} kept {metric_ratio:.4f} of the {c.prune.metric}, "
                         f"target {c.prune.target} (tolerance {TOLERANCE:.0%})")
    out = {"method": c.prune.method, "macs_ratio": new_cost.macs / dense_cost.macs,
           "params_ratio": new_cost.params / dense_cost.params,
           "groups_pruned": sum(1 for g, idx in outcome.plan.keep
                                if len(idx) < graph.group(g).size),
           "info": outcome.info}
    if c.prune.evaluate_oneshot:
        out["acc_oneshot"] = _accuracy(ctx, pruned, pvars)
    if c.prune.bn_recalibrate and "batch_stats" in pvars:
        pvars = reestimate_bn(pruned, pvars, (x for x, _ in calib.batches(c.calibrate.batch_size)))
        if c.prune.evaluate_oneshot:
            out["acc_bn_recalibrated"] = _accuracy(ctx, pruned, pvars)
    probe = jnp.asarray(calib.images[:8] if calib is not None else
                        np.zeros((2,) + ctx.input_shape[1:], np.float32))
    if not bool(jnp.all(jnp.isfinite(jax.jit(pruned.apply)(pvars, probe)))):
        raise ValueError(f"method {c.prune.method!r} produced a network with non-finite outputs")
    with open(os.path.join(ctx.workdir.stage_dir("prune"), "plan.json"), "w") as f:
        f.write(outcome.plan.to_json())
    out["model_dir"] = ctx.save_model("prune", c.model, pvars, plan=outcome.plan,
                                      num_classes=c.num_classes, in_channels=c.in_channels)
    log.info("prune: %s kept %.4f of the MACs; one-shot top-1 %s", c.prune.method,
             out["macs_ratio"], out.get("acc_oneshot"))
    return out
