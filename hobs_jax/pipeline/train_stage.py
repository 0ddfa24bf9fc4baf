"""Stage ``train``: the dense network, trained from scratch, or loaded from a hobs_jax
checkpoint or a torch state_dict (optionally trained further)."""

from __future__ import annotations

import jax

from hobs_jax import faults, models
from hobs_jax.pipeline.context import Context, log


def initial_variables(ctx: Context) -> dict:
    c = ctx.config
    if c.init.kind == "scratch":
        if ctx.spec is not None and ctx.spec["kind"] == "nnx":
            return ctx.initial_variables_nnx()  # the NNX module's own initializers
        return models.init(ctx.dense_model(), jax.random.key(c.seed), ctx.input_shape)
    if c.init.kind == "checkpoint":
        from hobs_jax import export

        _model, variables, meta = export.load(c.init.path)
        want = c.model.name if ctx.spec is None else ctx.spec["import_path"]
        have = meta.get("model") if ctx.spec is None else meta.get("spec", {}).get("import_path")
        if have != want:
            raise ValueError(f"init.path={c.init.path!r} holds a {have or meta.get('model')!r}, "
                             f"but the config's model is {want!r}")
        if ctx.spec is None:  # zoo checkpoints record their head and input
            for key in ("num_classes", "in_channels"):
                if meta.get(key) != c[key]:
                    raise ValueError(f"init.path={c.init.path!r} holds a {meta.get('model')} with "
                                     f"{key}={meta.get(key)}, but the config has {key}={c[key]}")
        return variables
    if ctx.spec is not None:
        raise ValueError("init.kind='torch' converts torchvision state_dicts of zoo models; "
                         f"model.import_path={ctx.spec['import_path']!r} is not one")
    # A torch state_dict, converted by the parity layer (torch needed only here).
    from parity.convert import load_torch_file, torch_to_flax

    _model, variables = torch_to_flax(c.model.name, load_torch_file(c.init.path))
    return variables


def run(ctx: Context) -> dict:
    from hobs_jax.train import fit

    c = ctx.config
    model = ctx.dense_model()
    variables = initial_variables(ctx)
    out: dict = {"init": c.init.kind,
                 "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"}
    if c.init.kind == "scratch" or c.init.train:
        result = fit(model, variables, ctx.train_loader(c.train), c.train,
                     ctx.workdir.stage_dir("train"), eval_data=ctx.eval_loader(),
                     callbacks=[faults.step_callback("train")]).completed()
        variables = result.variables
        m = result.metrics
        out.update({k: m.get(k) for k in ("steps", "seconds", "images_per_s", "best_val_top1",
                                          "val_top1", "stability_score", "stopped")})
        if "ast" in m:  # train.ast: the sample-selection record (summary.json's 'ast')
            out["ast"] = m["ast"]
        log.info("train: %d steps, val top-1 %.4f", m["steps"], m.get("val_top1", float("nan")))
    out["model_dir"] = ctx.save_model("train", model, variables)
    return out
