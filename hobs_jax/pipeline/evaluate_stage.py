"""Stage ``evaluate``: test accuracy (top-1, top-5 where the task has > 5 classes), MACs
and parameters of the dense and the pruned network."""

from __future__ import annotations

from typing import Any

from hobs_jax import macs
from hobs_jax.pipeline.context import Context


def final_stage(ctx: Context) -> str | None:
    """The stage whose model is 'the pruned network' (finetune if it ran, else prune)."""
    for stage in ("finetune", "prune"):
        if ctx.workdir.done(stage):
            return stage
    return None


def _measure(ctx: Context, model, variables) -> dict:
    acc = ctx.evaluate(model, variables, desc="evaluate")
    cost = macs.count(model, variables, ctx.input_shape)
    out = {"top1": acc["top1"], "loss": acc["loss"], "macs": cost.macs, "params": cost.params,
           "count": acc["count"]}
    if "top5" in acc:
        out["top5"] = acc["top5"]
    return out


def run(ctx: Context) -> dict:
    model, variables, _ = ctx.load_model("train")
    out: dict[str, Any] = {"dense": _measure(ctx, model, variables)}
    stage = final_stage(ctx)
    if stage is not None:
        pmodel, pvars, _ = ctx.load_model(stage)
        out["pruned"] = _measure(ctx, pmodel, pvars)
        out["pruned_from_stage"] = stage
        out["macs_ratio"] = out["pruned"]["macs"] / out["dense"]["macs"]
        out["params_ratio"] = out["pruned"]["params"] / out["dense"]["params"]
    return out
