"""Record the Fashion-MNIST baselines trained by the pipeline and ship their checkpoints.

The training itself is the pipeline's train stage:

    python -m hobs_jax.main --config=configs/resnet20_fmnist.py --workdir=runs/resnet20_fmnist \
        --config.stages=train
    python -m hobs_jax.main --config=configs/resnet56_fmnist.py --workdir=runs/resnet56_fmnist \
        --config.stages=train

This script reads those workdirs (stage record, metrics.jsonl), re-evaluates the saved
model on the full test set, copies it to ``checkpoints/<model>_fmnist`` (the orbax format
``hobs_jax.load`` reads; ``make demo`` starts from it), and writes
``docs/results/fmnist_baselines.{json,md,tex}`` (through ResultTable, from the run record
``docs/results/records/fmnist_baselines.json``; ``--render-only`` rebuilds it) and a
training-curve plot.

    python benchmarks/fmnist_baselines.py --runs runs --models resnet20,resnet56
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys

from hobs_jax.experiments import machine, studies
from hobs_jax.experiments.table import Column, ResultTable

NAME = "fmnist_baselines"

REPO = "."  # paths are relative to the repository root, where the benchmark scripts run
GOALS = {"resnet20": 0.930, "resnet56": 0.940}


def record(model: str, runs: str) -> dict:
    import hobs_jax
    from hobs_jax.data import EvalLoader, get_source
    from hobs_jax.train import evaluate, read_metrics

    wd = os.path.join(runs, f"{model}_fmnist")
    with open(os.path.join(wd, "train", "stage.json")) as f:
        rec = json.load(f)
    with open(os.path.join(wd, "config.json")) as f:
        cfg = json.load(f)
    net, variables, _ = hobs_jax.load(os.path.join(wd, "train", "model"))
    acc = evaluate(net, variables, EvalLoader(get_source("fashion_mnist", augment=False), "test", 500))
    evals = [r for r in read_metrics(os.path.join(wd, "train"), "eval")]
    records = read_metrics(os.path.join(wd, "train"))
    # Wall time from the metrics log (first to last record), so a resumed run's total is
    # counted, not just its last process's.
    wall = max(r["time"] for r in records) - min(r["time"] for r in records)
    dst = os.path.join(REPO, "checkpoints", f"{model}_fmnist")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(os.path.join(wd, "train", "model"), dst)
    t = cfg["train"]
    return {"model": model, "top1": acc["top1"], "top5": acc.get("top5"), "loss": acc["loss"],
            "goal": GOALS.get(model), "epochs": t["epochs"], "batch_size": t["batch_size"],
            "lr": t["lr"], "optimizer": t["optimizer"], "weight_decay": t["weight_decay"],
            "train_seconds": wall, "images_per_s": rec["outputs"].get("images_per_s"),
            "steps": rec["outputs"].get("steps"), "device": rec["outputs"].get("device") or machine.describe(),
            "curve": [(e["step"], e["top1"]) for e in evals], "checkpoint": os.path.relpath(dst, REPO),
            "command": f"python -m hobs_jax.main --config=configs/{model}_fmnist.py "
                       f"--workdir=runs/{model}_fmnist --config.stages=train"}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in rows:
        steps, acc = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(steps, [100 * a for a in acc], marker="o", label=f"{r['model']} ({100 * r['top1']:.2f}%)")
        if r["goal"]:
            ax.axhline(100 * r["goal"], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_ylim(80, 96)
    ax.grid(alpha=0.3)
    ax.legend(title="dotted: goal")
    ax.set_title("Dense baselines trained with hobs_jax.train.fit")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


LEGACY_DATE = "2026-11-22"  # the record of 2026-11 is a bare list; its commit dates it


def from_legacy(doc) -> tuple[list[dict], dict]:
    """Rows of the run record ``main`` writes (``docs/results/records/fmnist_baselines.json``:
    ``{"date", "command", "rows"}``, or the bare list of rows of 2026-11)."""
    if isinstance(doc, list):
        doc = {"date": LEGACY_DATE, "command": "python benchmarks/fmnist_baselines.py --models resnet20,resnet56",
               "rows": doc}
    key = f"fmnist_baselines@{doc['date']}"
    rows = []
    for r in doc["rows"]:
        rows.append(dict({k: v for k, v in r.items() if k != "curve"}, dataset="fashion_mnist", split="test",
                         source=key, met="yes" if r["goal"] is None or r["top1"] >= r["goal"] else "**no**",
                         recipe=f"{r['optimizer']} lr {r['lr']} wd {r['weight_decay']}",
                         train_minutes=r["train_seconds"] / 60, train_command=f"`{r['command']}`"))
    return rows, {key: {"command": doc["command"], "date": doc["date"],
                        "note": "training: the pipeline's train stage, device per row"}}


def table(rows, sources, name: str = "fmnist_baselines") -> ResultTable:
    """One row per dense baseline; one goal per model (its test top-1 goal)."""
    t = ResultTable(name, "Fashion-MNIST dense baselines",
                    [Column("model", "model"), Column("top1", "test top-1", "share", 3),
                     Column("goal", "goal", "share", 2), Column("met", "met"), Column("epochs", "epochs", "float", 0),
                     Column("batch_size", "batch", "int"), Column("recipe", "optimizer"), Column("device", "device"),
                     Column("train_minutes", "train wall min", "float", 1),
                     Column("images_per_s", "images/s", "float", 0), Column("train_command", "command")],
                    iso_tolerance=None, description=[
                        "Trained by the pipeline's train stage (device per row). Test accuracy is re-measured on "
                        "all 10,000 test images from the saved model. The shipped checkpoints "
                        "(`checkpoints/<model>_fmnist`, orbax, read by `hobs_jax.load`) are these models."])
    t.extend(rows)
    for r in rows:
        if r.get("goal") is not None:
            t.goal(f"{r['model']}: test top-1 >= {100 * r['goal']:.1f}%", r["top1"] >= r["goal"],
                   f"{100 * r['top1']:.2f}%")
    t.note(f"![curves]({name}.png)")
    t.add_sources(sources)
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=os.path.join(REPO, "runs"))
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results"))
    p.add_argument("--render-only", action="store_true",
                   help="rebuild the table from the stored run record (OUT/records/fmnist_baselines.json)")
    args = p.parse_args(argv)
    if not args.render_only:
        rows = [record(m, args.runs) for m in args.models.split(",") if m]
        studies.save_record(NAME, {"date": str(datetime.date.today()), "rows": rows,
                                   "command": f"python benchmarks/fmnist_baselines.py --models {args.models}"},
                            args.out)
        plot(rows, os.path.join(args.out, "fmnist_baselines.png"))
    studies.render(sys.modules[__name__], args.out)
    with open(os.path.join(args.out, NAME + ".md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
