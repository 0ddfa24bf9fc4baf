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
    export.save(out["orbax"], model, variables, plan=meta.get("plan"), overwrite=True)
    if c.export.torch:
        import torch  # the parity layer's dependency; only this optional output needs it

        _module, state_dict = export.to_torch(model, variables)
        out["torch"] = os.path.join(root, "model.pt")
        torch.save(state_dict, out["torch"])
    if c.export.onnx:
        out["onnx"] = export.to_onnx(model, variables, os.path.join(root, "model.onnx"),
                                     input_shape=ctx.input_shape)
    return out
