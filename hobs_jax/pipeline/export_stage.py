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
    ctx.export(out["orbax"], model, variables, plan=meta.get("plan"))
    if c.export.torch and ctx.spec is not None:  # torchvision's structure exists for zoo models only
        out["torch"] = None
        out["torch_skipped"] = "not a zoo model: no torchvision structure (the ONNX export works for any model)"
    elif c.export.torch:
        import torch  # the parity layer's dependency; only this optional output needs it

        _module, state_dict = export.to_torch(model, variables)
        out["torch"] = os.path.join(root, "model.pt")
        torch.save(state_dict, out["torch"])
    if c.export.onnx:
        target = model if ctx.spec is None else ctx.prunable(variables)
        out["onnx"] = export.to_onnx(target, variables, os.path.join(root, "model.onnx"),
                                     input_shape=ctx.input_shape)
    return out
