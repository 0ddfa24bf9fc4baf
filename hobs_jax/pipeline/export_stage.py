"""Stage ``export``: the final network as an orbax checkpoint (variables, widths, plan;
``hobs_jax.load`` restores it), a PyTorch state_dict of the torchvision-structured model
at the pruned widths, and optionally ONNX."""

from __future__ import annotations

import os

from hobs_jax.pipeline.context import Context
from hobs_jax.pipeline.evaluate_stage import final_stage


def run(ctx: Context) -> dict:
    from hobs_jax import export

    c = ctx.config
    stage = final_stage(ctx) or "train"
    model, variables, meta = ctx.load_model(stage)
    root = ctx.workdir.stage_dir("export")
    out = {"from_stage": stage, "orbax": os.path.join(root, "model")}
    export.save(out["orbax"], c.model, variables, plan=meta.get("plan"),
                num_classes=c.num_classes, in_channels=c.in_channels)
    if c.export.torch:
        out["torch"] = export.save_torch(os.path.join(root, "model.pt"), c.model, variables)
    if c.export.onnx:
        out["onnx"] = export.save_onnx(os.path.join(root, "model.onnx"), c.model, variables,
                                       ctx.input_shape)
    return out
