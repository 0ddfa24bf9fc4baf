"""A network outside the zoo, trained on Fashion-MNIST and pruned one-shot to half its
MACs: H-OBS next to magnitude (issue 17).

    python benchmarks/anymodel_fmnist.py --model hobs_jax.testing.nets:DenseNetFM --epochs 4

1. builds ``--model`` (a key of ``hobs_jax.testing``'s LINEN_NETS / NNX_NETS or an import
   path ``package.module:Class`` of a linen or NNX module with hard-coded widths;
   ``--kwargs`` its constructor arguments as JSON) at 28x28x1 and trains it on the full
   training split (60,000 images) with the pipeline's Fashion-MNIST recipe
   (``hobs_jax.pipeline.config.fmnist_config``: SGD Nesterov, lr 0.1 with 10% warmup and
   cosine decay, weight decay 5e-4, batch 128, random-crop and flip augmentation) for
   ``--epochs``; an interrupted training resumes from ``--workdir`` on the next run (a
   stopped fit is never taken for a trained network); the trained network is saved there
   (``hobs_jax.export``, by import path) and reused on reruns;
2. fixes ``--calib-images`` calibration images (training split, seed 0, no augmentation;
   the pipeline's calibrate stage);
3. prunes it one-shot to ``--target`` of the MACs with each row of ``--rows``
   (``METHOD`` or ``METHOD-uniform`` / ``METHOD-global``), met within 1%;
4. reports test accuracy of the dense network, right after pruning, after BatchNorm
   re-estimation on the calibration images, and, for the rows in ``--finetune-rows``,
   after ``--finetune-epochs`` of fine-tuning with the pipeline's fine-tune recipe (SGD
   lr 0.01 cosine, no warmup) from the re-estimated network.

Writes the run record ``OUT/records/anymodel_fmnist.json`` and the table
``OUT/anymodel_fmnist.{json,md,tex}`` (:class:`~hobs_jax.experiments.table.ResultTable`),
with the command, the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

from hobs_jax.experiments.table import Column, ResultTable

SHAPE = (1, 28, 28, 1)


def _network(name: str, kwargs: dict, seed: int):
    """(Prunable of the untrained network). ``name``: a key of ``hobs_jax.testing``'s
    LINEN_NETS / NNX_NETS, or an import path ``package.module:Class`` of a linen or NNX module."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hobs_jax import graph as G
    from hobs_jax.graph.spec import resolve
    from hobs_jax.testing.nets import LINEN_NETS
    from hobs_jax.testing.nnx_nets import NNX_NETS

    cls: Any = LINEN_NETS.get(name) or NNX_NETS.get(name) or (resolve(name) if ":" in name else None)
    if cls is None:
        raise SystemExit(f"unknown --model {name!r}; use one of {sorted(LINEN_NETS) + sorted(NNX_NETS)} "
                         "or an import path package.module:Class")
    if issubclass(cls, nn.Module):
        from hobs_jax.graph.linen_model import wrap

        module = cls(**kwargs)
        adapter = wrap(module)
        variables = jax.jit(lambda: adapter.init(jax.random.key(seed), jnp.zeros(SHAPE), train=False))()
        return G.prunable(module, variables, SHAPE)
    if issubclass(cls, nnx.Module):
        module = nnx.jit(lambda: cls(**kwargs, rngs=nnx.Rngs(seed)))()
        return G.prunable(module, input_shape=SHAPE)
    raise SystemExit(f"--model {name!r} is not a flax.linen or flax.nnx module class")


def train(args, source):
    """The trained network's Prunable (trained once; reloaded from the workdir after)."""
    from hobs_jax import export
    from hobs_jax.data import EvalLoader, TrainLoader
    from hobs_jax.pipeline.config import fmnist_config
    from hobs_jax.train import fit

    path = os.path.join(args.workdir, "dense")
    if os.path.exists(os.path.join(path, "meta.json")):
        return export.load_prunable(path), json.load(open(os.path.join(args.workdir, "train.json")))
    p = _network(args.model, args.kwargs, args.seed)
    t = fmnist_config("resnet20", args.epochs).train  # the recipe of configs/resnet20_fmnist.py
    t.progress, t.tensorboard = False, False
    t0 = time.time()
    # fit resumes from the checkpoints under workdir/train after an interruption.
    result = fit(p.module, p.variables, TrainLoader(source, "train", t.batch_size, seed=args.seed), t,
                 os.path.join(args.workdir, "train"), eval_data=EvalLoader(source, "test", 500))
    m = result.metrics
    if m["stopped"] or m["steps"] < m["total_steps"]:
        # An interrupted run is not a trained network: save nothing, rerun to resume.
        raise SystemExit(f"training stopped at step {m['steps']} of {m['total_steps']} ({m['stopped'] or 'early'}); "
                         f"rerun the same command to resume from {args.workdir}/train")
    p = p.with_variables(result.variables)
    init_kwargs = args.kwargs if p.kind == "nnx" else None
    export.save(path, p, overwrite=True, init_kwargs=init_kwargs)
    rec = {"epochs": args.epochs, "steps": m["steps"], "train_images": m["steps"] * t.batch_size,
           "seconds": round(time.time() - t0, 1), "images_per_s": round(m["images_per_s"], 1),
           "resumed_from": m["resumed_from"], "val_top1": m.get("val_top1")}
    json.dump(rec, open(os.path.join(args.workdir, "train.json"), "w"))
    return export.load_prunable(path), rec


NAME = "anymodel_fmnist"
SCRIPT = "benchmarks/anymodel_fmnist.py"
COLUMNS = (("row", "row", "text", 0), ("macs_ratio", "MACs kept", "ratio", 4),
           ("params_ratio", "params kept", "ratio", 4), ("top1_oneshot", "top-1 one-shot", "pct", 2),
           ("top1_bn", "top-1 after BN re-estimation", "pct", 2), ("top1_ft", "top-1 after fine-tuning", "pct", 2),
           ("prune_seconds", "prune s", "float", 0))


def parse(argv=None) -> argparse.Namespace:
    from hobs_jax.experiments.studies import parser

    ap = parser(__doc__)
    ap.add_argument("--model", default="hobs_jax.testing.nets:DenseNetFM")
    ap.add_argument("--kwargs", default="{}", help="constructor arguments (JSON object)")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--rows", default="hobs,hobs_nohessian,magnitude-uniform,magnitude-global")
    ap.add_argument("--options", default="{}", help="options of the hobs rows (JSON object), "
                    "e.g. '{\"damp\": 0.1}'")
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--finetune-rows", default="hobs,magnitude-global", help="rows also fine-tuned ('' = none)")
    ap.add_argument("--finetune-epochs", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/anymodel_fmnist")
    args = ap.parse_args(argv)
    args.kwargs, args.options = json.loads(args.kwargs), json.loads(args.options)
    args.workdir = os.path.join(args.workdir, args.model.rpartition(":")[2] or args.model)
    return args


def finetune(p, source, args, row: str):
    """``p`` fine-tuned for ``args.finetune_epochs`` with the pipeline's fine-tune recipe."""
    from hobs_jax.data import TrainLoader
    from hobs_jax.pipeline.config import fmnist_config
    from hobs_jax.train import fit

    t = fmnist_config("resnet20", args.epochs).finetune
    t.epochs, t.progress, t.tensorboard = float(args.finetune_epochs), False, False
    work = os.path.join(args.workdir, "finetune", row)
    shutil.rmtree(work, ignore_errors=True)  # a short run: restarted, never resumed onto another plan
    result = fit(p.module, p.variables, TrainLoader(source, "train", t.batch_size, seed=args.seed), t, work)
    if result.metrics["stopped"]:
        raise SystemExit(f"fine-tuning of {row} stopped ({result.metrics['stopped']}); rerun")
    return p.with_variables(result.variables)


def measure(args, *, device: str, source: str) -> list[dict]:
    """The dense row and one row per ``args.rows`` (module doc)."""
    from hobs_jax import macs, methods
    from hobs_jax.data import EvalLoader, get_source
    from hobs_jax.experiments.studies import calibration
    from hobs_jax.stats import reestimate_bn
    from hobs_jax.train import evaluate

    data = get_source("fashion_mnist", augment=True)
    dense, trained = train(args, data)
    calib = calibration(args.calib_images, seed=args.seed)  # as the calibrate stage

    def acc(p) -> float:
        return float(evaluate(p.module, p.variables, EvalLoader(data, "test", 500), desc="eval")["top1"])

    base = macs.count(dense)
    common = {"model": dense.label, "kind": dense.kind, "kwargs": args.kwargs, "dataset": "fashion_mnist",
              "split": "test", "device": device, "source": source}
    rows = [dict(common, row="dense", macs=base.macs, params=base.params, macs_ratio=1.0, params_ratio=1.0,
                 top1_oneshot=acc(dense), **{f"train_{k}": v for k, v in trained.items()})]
    print(f"{dense.label}: dense top-1 {rows[0]['top1_oneshot']:.4f}, {base.macs:,} MACs", flush=True)
    tuned = set(filter(None, args.finetune_rows.split(",")))
    for row in filter(None, args.rows.split(",")):
        method, _, alloc = row.partition("-")
        options = dict(args.options, progress=False) if method == "hobs" else {}
        if alloc:
            options["allocation"] = alloc
        t0 = time.time()
        r = methods.prune(method, dense, target=args.target, calib=calib, options=options)
        seconds = time.time() - t0
        one = acc(r.prunable)
        bn = reestimate_bn(r.prunable, (x for x, _ in calib.batches(256)))
        rec = dict(common, row=row, method=method, allocation=alloc or "default", options=options,
                   target=args.target, macs_ratio=r.macs_ratio, params_ratio=r.params_ratio,
                   prune_seconds=round(seconds, 1), calibration_images=args.calib_images,
                   top1_oneshot=one, top1_bn=acc(bn), top1_ft=None, finetune_epochs=None)
        if row in tuned:
            rec.update(top1_ft=acc(finetune(bn, data, args, row)), finetune_epochs=args.finetune_epochs)
        rows.append(rec)
        print(f"{row}: MACs {r.macs_ratio:.4f}, top-1 {one:.4f} one-shot, {rec['top1_bn']:.4f} after BN "
              f"re-estimation, {rec['top1_ft']} fine-tuned ({seconds:.0f} s)", flush=True)
    return rows


def table(rows, sources) -> ResultTable:
    """The table of a run record's rows (module doc)."""
    d = next(r for r in rows if r["row"] == "dense")
    pruned = [r for r in rows if r["row"] != "dense"]
    target = pruned[0]["target"] if pruned else None
    ft = sorted({r["finetune_epochs"] for r in pruned if r.get("finetune_epochs")})
    desc = [f"`{d['model']}` ({d['kind']}, constructor arguments {json.dumps(d['kwargs'])}; hard-coded widths, no "
            f"width fields), trained {d['train_epochs']:g} epochs on the 60,000 training images "
            f"({d['train_steps']} steps of 128, {d['train_seconds']:.0f} s, {d['train_images_per_s']:.0f} images/s on "
            f"a shared CPU) with the pipeline's Fashion-MNIST recipe, then pruned one-shot to {target} of the MACs by "
            f"each row with {pruned[0]['calibration_images'] if pruned else 0} calibration images (training split, "
            f"seed 0); top-1 on the 10,000 test images. Dense: {100 * d['top1_oneshot']:.2f}% top-1, "
            f"{d['macs']:,} MACs, {d['params']:,} params.",
            "Rows: `hobs` (H-OBS, default options: global allocation, OBS compensation, sequential refit), "
            "`hobs_nohessian` (its ablation without second-order information), `magnitude-uniform` / "
            "`magnitude-global` (group L2 norm, one keep ratio / one global threshold). BN re-estimation: "
            "`hobs_jax.stats.reestimate_bn` on the calibration images."
            + (f" Fine-tuning: {', '.join(f'{e:g}' for e in ft)} epoch(s) with the pipeline's fine-tune recipe "
               "(SGD Nesterov lr 0.01 cosine, no warmup, augmentation on) from the re-estimated network; '-' = "
               "not fine-tuned." if ft else "")]
    t = ResultTable(NAME, f"A network outside the zoo on Fashion-MNIST: one-shot pruning to {target} of the MACs",
                    [Column(k, label, kind, digits, best="max" if k.startswith("top1") else "")
                     for k, label, kind, digits in COLUMNS], description=desc)
    t.extend(pruned)
    t.meta["dense"] = d
    t.goal("dense network >= 88% test top-1", d["top1_oneshot"] >= 0.88, f"{100 * d['top1_oneshot']:.2f}%")
    by = {r["row"]: r for r in t.rows}
    mags = [r for k, r in by.items() if k.startswith("magnitude")]
    for key, what in (("top1_oneshot", "one-shot"), ("top1_bn", "after BN re-estimation")):
        if "hobs" in by and mags:
            best = max(mags, key=lambda r: r[key])
            t.goal(f"H-OBS keeps more top-1 than the best magnitude row {what}", by["hobs"][key] > best[key],
                   f"{100 * by['hobs'][key]:.2f}% vs {best['row']} {100 * best[key]:.2f}%")
    if "hobs" in by:
        h = by["hobs"]
        t.note(f"H-OBS one-shot is {100 * (d['top1_oneshot'] - h['top1_oneshot']):.2f} points below the dense "
               f"network ({100 * (d['top1_oneshot'] - h['top1_bn']):.2f} after BN re-estimation).")
    tuned = [r for r in t.rows if r.get("top1_ft") is not None]
    if len(tuned) > 1:
        t.note("Fine-tuning gains: " + ", ".join(
            f"{r['row']} {100 * (r['top1_ft'] - r['top1_bn']):+.2f} points" for r in tuned)
            + " from the re-estimated network.")
        others = [r for r in tuned if r["row"] != "hobs"]
        if "hobs" in by and others:
            best = max(others, key=lambda r: r["top1_ft"])
            above = by["hobs"]["top1_oneshot"] > best["top1_ft"]
            t.note(f"H-OBS one-shot ({100 * by['hobs']['top1_oneshot']:.2f}%) is {'above' if above else 'below'} "
                   f"the best other fine-tuned row ({best['row']} {100 * best['top1_ft']:.2f}%).")
    t.note("Prune times and training throughput were taken on a shared 2-core CPU: noisy.")
    t.add_sources(sources)
    return t


def main(argv=None) -> int:
    from hobs_jax.experiments import records
    from hobs_jax.experiments.studies import command, publish

    args = parse(argv)
    os.makedirs(args.workdir, exist_ok=True)
    key, src = records.source_here(command(SCRIPT, argv))
    rows = measure(args, device=src["device"], source=key)
    publish(NAME, rows, {key: src}, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
