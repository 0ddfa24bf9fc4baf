"""Stage ``finetune``: train the pruned network briefly (optionally distilling from the
dense one), with the same resumable engine as ``train``."""

from __future__ import annotations

from hobs_jax import faults
from hobs_jax.pipeline.context import Context, log


def run(ctx: Context) -> dict:
    from hobs_jax.train import Teacher, fit

    c = ctx.config
    model, variables, meta = ctx.load_model("prune")
    teacher = None
    if c.finetune.kd.enabled:
        dense, dense_vars, _ = ctx.load_model("train")
        teacher = Teacher(dense.apply, dense_vars)
    result = fit(model, variables, ctx.train_loader(c.finetune), c.finetune,
                 ctx.workdir.stage_dir("finetune"), eval_data=ctx.eval_loader(), teacher=teacher,
                 callbacks=[faults.step_callback("finetune")]).completed()
    m = result.metrics
    log.info("finetune: %d steps, val top-1 %.4f", m["steps"], m.get("val_top1", float("nan")))
    out = {k: m.get(k) for k in ("steps", "seconds", "images_per_s", "best_val_top1", "val_top1",
                                 "stability_score", "stopped")}
    if "ast" in m:  # finetune.ast: the sample-selection record (summary.json's 'ast')
        out["ast"] = m["ast"]
    out["model_dir"] = ctx.save_model("finetune", model, result.variables, plan=meta.get("plan"))
    return out
