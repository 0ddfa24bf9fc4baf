"""Stage ``finetune``: train the pruned network briefly (optionally distilling from the
dense one), with the same resumable engine as ``train``."""

from __future__ import annotations

from hobs_jax import faults
from hobs_jax.pipeline.context import Context, log


def run(ctx: Context) -> dict:
    from hobs_jax.train import Teacher, fit

    c = ctx.config
    model, variables, meta = ctx.load_model("prune")
    teacher, dense = None, None
    if c.finetune.kd.enabled or needs_reference(c.finetune):
        dense, dense_vars, _ = ctx.load_model("train")
        dense = Teacher(dense.apply, dense_vars)  # the frozen dense network
    if c.finetune.kd.enabled:
        teacher = dense
    section, reference_seconds = reducible_reference(ctx, c.finetune, dense)
    result = fit(model, variables, ctx.train_loader(section), section,
                 ctx.workdir.stage_dir("finetune"), eval_data=ctx.eval_loader(), teacher=teacher,
                 callbacks=[faults.step_callback("finetune")]).completed()
    m = result.metrics
    log.info("finetune: %d steps, val top-1 %.4f", m["steps"], m.get("val_top1", float("nan")))
    out = {k: m.get(k) for k in ("steps", "seconds", "images_per_s", "best_val_top1", "val_top1",
                                 "stability_score", "stopped")}
    if "ast" in m:  # finetune.ast: the sample-selection record (summary.json's 'ast')
        out["ast"] = dict(m["ast"], reference_seconds=reference_seconds)
    out["model_dir"] = ctx.save_model("finetune", model, result.variables, plan=meta.get("plan"))
    return out


def needs_reference(section) -> bool:
    """Score 'reducible' with no ``ast.reference``: the stage supplies the dense network's."""
    a = section.ast
    return bool(a.enabled and a.rule == "ast" and a.score == "reducible" and not a.reference)


def reducible_reference(ctx: Context, section, dense):
    """``(section, seconds)``: when :func:`needs_reference`, a copy of ``section`` whose
    reference is the dense network's (``dense``: a Teacher) per-example losses on the
    training split (``finetune/reference_losses.npy``, computed once: a resumed stage
    reuses it; ``seconds`` is 0 then) -- the network the pruned one was cut from is what
    its fine-tuning can at best recover (RHO-LOSS's irreducible loss,
    hobs_jax.train.ast_reference). Otherwise ``(section, 0.0)``."""
    if not needs_reference(section):
        return section, 0.0
    import copy
    import os

    from hobs_jax.train import ast_reference

    path = os.path.join(ctx.workdir.stage_dir("finetune"), "reference_losses.npy")
    seconds = ast_reference.ensure(path, dense.apply_fn, dense.variables, ctx.source, "train",
                                   log=log.info)
    section = copy.deepcopy(section)
    section.ast.reference = path
    return section, seconds
