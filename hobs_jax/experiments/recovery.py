"""The recovery recipe: which fine-tuning keeps a pruned network at or above its one-shot
accuracy at every evaluated step (issue: H-OBS on ResNet-56 at 2x fell from 94.02% one-shot
to 93.38% after 50 steps at lr 0.01).

One pruned network (the method's cut of the dense checkpoint, BatchNorm re-estimated on
the calibration images: the one-shot point, step 0) is fine-tuned once per recipe, each a
single run of the longest length evaluated at the shorter steps on the way (the train
section's ``eval_steps``), so every curve follows its own full schedule. A recipe is the
pipeline's ``finetune`` section plus overrides, named in :data:`RECIPES` and combinable
with ``+`` (``kd+warmup``), or given as ``key=value`` pairs (``lr=0.003,kd.enabled=true``);
``bnfrozen`` trains with BatchNorm in inference mode (running statistics used and kept).

    python -m hobs_jax.experiments.recovery --model resnet20 --target 0.5 \\
        --recipes base,warmup,lr3e-3,kd,bnfrozen --steps 50,200,epoch \\
        --workdir runs/recovery --out docs/results/recovery_fmnist_resnet20

writes ``OUT.json`` (one record per recipe: the curve, its minimum, whether it ever fell
below the one-shot point) and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

from hobs_jax.experiments import common

#: Named recipes: overrides of the pipeline's ``finetune`` section ("@frozen_bn": the
#: BatchNorm mode, not a config key).
RECIPES: dict[str, dict[str, Any]] = {
    "base": {},
    "warmup": {"warmup_fraction": 0.1},
    "lr3e-3": {"lr": 0.003},
    "lr1e-3": {"lr": 0.001},
    "kd": {"kd.enabled": True},
    "bnfrozen": {"@frozen_bn": True},
    "nowd": {"weight_decay": 0.0},
    "adamw": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4},
}


def parse_recipe(text: str) -> dict:
    """``name[+name...]`` of :data:`RECIPES` or ``key=value[,key=value]`` (JSON values) ->
    overrides (one-line error for an unknown name)."""
    if "=" in text:
        out = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
        return out
    out = {}
    for name in text.split("+"):
        if name not in RECIPES:
            raise ValueError(f"recipe {name!r}: unknown; use one of {', '.join(RECIPES)} (joined by '+') or "
                             f"key=value pairs")
        out.update(RECIPES[name])
    return out


def prune_once(args, src, calib):
    """(model, BN-re-estimated variables, record) of the method's cut, cached in the workdir."""
    import hobs_jax
    from hobs_jax import export
    from hobs_jax.methods import prune

    path = os.path.join(args.workdir, f"pruned_{args.model}_{args.method}_{args.target:g}")
    meta_path = os.path.join(args.workdir, f"pruned_{args.model}_{args.method}_{args.target:g}.json")
    dense, dvars, _ = hobs_jax.load(args.checkpoint)
    if os.path.exists(meta_path):
        model, variables, _ = hobs_jax.load(path)
        return dense, dvars, model, variables, json.load(open(meta_path))
    t0 = time.time()
    r = prune(args.method, args.model, dvars, target=args.target, calib=calib, seed=0)
    variables = common.recalibrate(r.model, r.variables, calib)
    rec = {"model": args.model, "method": args.method, "target": args.target, "macs_ratio": r.macs_ratio,
           "params_ratio": r.params_ratio, "acc_dense": common.accuracy(dense, dvars, src),
           "acc_oneshot_raw": common.accuracy(r.model, r.variables, src),
           "acc_oneshot": common.accuracy(r.model, variables, src), "prune_seconds": time.time() - t0}
    export.save(path, r.model, common.host(variables), plan=r.outcome.plan, overwrite=True)
    common.write_json(meta_path, rec)
    return dense, dvars, r.model, variables, rec


def curve(args, name, overrides, dense, dvars, model, variables, src, total, shorter) -> dict:
    from hobs_jax.data import EvalLoader, TrainLoader
    from hobs_jax.train import Teacher, eval_curve, fit, fit_seconds

    frozen = bool(overrides.get("@frozen_bn"))
    cfg = {k: v for k, v in overrides.items() if not k.startswith("@")}
    c = common.recipe(args.model, cfg, steps=total)
    with c.unlocked():
        c.eval_steps = ",".join(str(s) for s in shorter)
        c.eval_every = total
    teacher = Teacher(dense.apply, dvars) if c.kd.enabled else None
    workdir = os.path.join(args.workdir, "runs", f"{args.model}_{args.method}_{args.target:g}", name)
    fit(common.FrozenBatchNorm(model) if frozen else model, variables,
        TrainLoader(src, "train", c.batch_size, seed=c.seed), c, workdir,
        eval_data=EvalLoader(src, "test", 500), teacher=teacher).completed()
    # From metrics.jsonl: a recipe stopped and resumed keeps the points and seconds of its first call.
    evals = {k: v for k, v in eval_curve(workdir).items() if k <= total}
    return {"recipe": name, "overrides": overrides, "acc_by_steps": {str(k): evals[k] for k in sorted(evals)},
            "seconds": fit_seconds(workdir),
            "resolved": {k: (c[k] if "." not in k else c[k.split(".")[0]][k.split(".")[1]]) for k in cfg}}


def report(out: str, command: str, base: dict, rows: list[dict], note: list[str]) -> list[str]:
    """Save the run record (``OUT's folder/records/NAME.json``: command, device, the pruned
    point, the recipes' curves, notes) and write the table built from it."""
    from hobs_jax.bench import sysinfo
    from hobs_jax.experiments import studies

    one = base["acc_oneshot"]
    for r in rows:
        vals = list(r["acc_by_steps"].values())
        r["min_acc"] = min(vals) if vals else None
        r["never_below_oneshot"] = bool(vals) and min(vals) >= one
        r["final"] = vals[-1] if vals else None
    return studies.publish_record(sys.modules[__name__], out, {
        "command": command, "device": sysinfo.describe(sysinfo.machine()), "pruned": base, "rows": rows,
        "notes": note})


NAME = "recovery_fmnist_resnet56"


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """Rows (one per recipe) of the run record :func:`report` writes; the pruned point's
    figures ride on every row (``acc_dense``, ``acc_oneshot``, ...)."""
    base = doc["pruned"]
    key = "recovery"
    rows = []
    for r in doc["rows"]:
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(the pipeline's finetune section)"
        rows.append({"recipe": r["recipe"], "overrides_text": ov, "min_acc": r["min_acc"],
                     "never": "yes" if r["never_below_oneshot"] else "no", "final": r["final"],
                     **{f"acc_{s}": v for s, v in r["acc_by_steps"].items()}, "acc_by_steps": r["acc_by_steps"],
                     "model": base["model"], "method": base["method"], "target": base["target"],
                     "macs_ratio": base["macs_ratio"], "acc_dense": base["acc_dense"],
                     "acc_oneshot_raw": base["acc_oneshot_raw"], "acc_oneshot": base["acc_oneshot"],
                     "dataset": "fashion_mnist", "split": "test", "device": doc["device"], "source": key})
    return rows, {key: {"command": doc["command"], "notes": doc.get("notes", [])}}


def table(rows, sources, name: str = NAME):
    """The recipes' test top-1 at each evaluated step after the one-shot point."""
    from hobs_jax.experiments.table import Column, ResultTable

    steps = sorted({int(s) for r in rows for s in r["acc_by_steps"]})
    b = rows[0] if rows else {}
    title = f"Recovery recipe: {b.get('method')} on {b.get('model')} at {b.get('target', 0):g} of the MACs"
    t = ResultTable(name, title,
                    [Column("recipe", "recipe"), Column("overrides_text", "overrides"),
                     *[Column(f"acc_{s}", f"+{s}", "pct") for s in steps], Column("min_acc", "min", "pct"),
                     Column("never", "never below one-shot")], description=[
                        f"Dense top-1 {100 * b.get('acc_dense', 0):.2f}%; the cut "
                        f"(MACs kept {b.get('macs_ratio', 0):.4f}) "
                        f"{100 * b.get('acc_oneshot_raw', 0):.2f}% right after pruning, "
                        f"**{100 * b.get('acc_oneshot', 0):.2f}%** after BN re-estimation on the calibration images: "
                        "the one-shot point (step 0). Every recipe: one run of the longest length from that point, "
                        "evaluated on the test set (10,000 images) at the listed steps of its own schedule; batch "
                        "128, seed 0, augmentation on. The machine was shared with other jobs."])
    t.extend(rows)
    for info in sources.values():
        for n in info.get("notes", []):
            t.note(n)
    t.add_sources({k: {"command": v["command"]} for k, v in sources.items()})
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=None, help="dense export dir (default checkpoints/MODEL_fmnist)")
    p.add_argument("--method", default="hobs")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--recipes", default="base,warmup,lr3e-3,kd,bnfrozen")
    p.add_argument("--steps", default="50,200,epoch", help="evaluated steps; 'epoch' = one epoch (468)")
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--workdir", default="runs/recovery")
    p.add_argument("--out", required=True)
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--render-only", action="store_true",
                   help="rebuild OUT's table from its stored run record (OUT's folder/records/NAME.json)")
    args = p.parse_args(argv)
    if args.render_only:
        from hobs_jax.experiments import studies

        print(studies.render_prefix(sys.modules[__name__], args.out))
        return
    args.checkpoint = args.checkpoint or os.path.join("checkpoints", f"{args.model}_fmnist")
    command = "python -m hobs_jax.experiments.recovery " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    recipes = [r for r in args.recipes.split(",") if r]
    parsed = {r: parse_recipe(r) for r in recipes}  # bad names fail before any compute
    src = common.source()
    per_epoch = src.size("train") // 128
    steps = sorted({per_epoch if s == "epoch" else int(s) for s in args.steps.split(",") if s})
    calib = common.calibration(src, args.calib_images, 0)
    dense, dvars, model, variables, base = prune_once(args, src, calib)
    rows = []
    for name in recipes:
        path = os.path.join(args.workdir, "rows", f"{args.model}_{args.method}_{args.target:g}",
                            name.replace("/", "_") + f"_{steps[-1]}.json")
        if os.path.exists(path):
            rows.append(json.load(open(path)))
            continue
        rec = curve(args, name, parsed[name], dense, dvars, model, variables, src, steps[-1], steps[:-1])
        rec["command"] = command
        common.write_json(path, rec)
        print(f"{name}: {rec['acc_by_steps']} ({rec['seconds']:.0f} s)", flush=True)
        rows.append(rec)
    report(args.out, command, base, rows, args.note)


if __name__ == "__main__":
    from hobs_jax import cli

    cli.run_job(main)
