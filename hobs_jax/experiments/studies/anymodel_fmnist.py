"""A network outside the zoo, trained briefly on Fashion-MNIST and pruned one-shot to half
its MACs: H-OBS next to magnitude (issue 17).

    python benchmarks/anymodel_fmnist.py --model resnext --epochs 3

1. builds ``--model`` from ``hobs_jax.testing`` (a linen or NNX module with hard-coded
   widths; ``--kwargs`` its constructor arguments as JSON) at 28x28x1, and trains it with
   the pipeline's Fashion-MNIST recipe (SGD Nesterov, lr 0.1 cosine, weight decay 5e-4,
   batch 128, augmentation on) for ``--epochs``; the trained network is saved under
   ``--workdir`` (``hobs_jax.export``, by import path) and reused on reruns;
2. fixes ``--calib-images`` calibration images (training split, seed 0, no augmentation;
   the pipeline's calibrate stage);
3. prunes it one-shot to ``--target`` of the MACs with each row of ``--rows``
   (``METHOD`` or ``METHOD-uniform`` / ``METHOD-global``), met within 1%;
4. reports test accuracy of the dense network, right after pruning, and after BatchNorm
   re-estimation on the calibration images; no fine-tuning.

Writes ``docs/results/anymodel_fmnist.{json,md}`` (``--out``), with the command, the
machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

from hobs_jax.experiments import machine

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

    cls = LINEN_NETS.get(name) or NNX_NETS.get(name) or (resolve(name) if ":" in name else None)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnext")
    ap.add_argument("--kwargs", default="{}", help="constructor arguments (JSON object)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--rows", default="hobs,hobs_nohessian,magnitude-uniform,magnitude-global")
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/anymodel_fmnist")
    ap.add_argument("--out", default="docs/results/anymodel_fmnist")
    args = ap.parse_args(argv)
    args.kwargs = json.loads(args.kwargs)
    args.workdir = os.path.join(args.workdir, args.model.rpartition(":")[2] or args.model)
    os.makedirs(args.workdir, exist_ok=True)

    from hobs_jax import macs, methods
    from hobs_jax.data import EvalLoader, get_source
    from hobs_jax.stats import reestimate_bn
    from hobs_jax.train import evaluate

    source = get_source("fashion_mnist", augment=True)
    dense, trained = train(args, source)
    from hobs_jax.data import sample_indices

    idx = sample_indices(source.size("train"), args.calib_images, args.seed)  # as the calibrate stage
    images, labels = source.batch("train", idx, train=False)
    calib = methods.Calibration(np.asarray(images, np.float32), np.asarray(labels, np.int32))

    def acc(p) -> float:
        return float(evaluate(p.module, p.variables, EvalLoader(source, "test", 500), desc="eval")["top1"])

    base = macs.count(dense)
    out = {"model": dense.label, "kind": dense.kind, "kwargs": args.kwargs, "train": trained,
           "dense": {"top1": acc(dense), "macs": base.macs, "params": base.params},
           "target": args.target, "calibration_images": len(idx), "rows": []}
    print(f"{dense.label}: dense top-1 {out['dense']['top1']:.4f}, {base.macs:,} MACs", flush=True)
    for row in filter(None, args.rows.split(",")):
        method, _, alloc = row.partition("-")
        options = {"allocation": alloc} if alloc else {}
        if method == "hobs":
            options["progress"] = False
        t0 = time.time()
        r = methods.prune(method, dense, target=args.target, calib=calib, options=options)
        seconds = time.time() - t0
        one = acc(r.prunable)
        bn = reestimate_bn(r.prunable, (x for x, _ in calib.batches(256)))
        rec = {"row": row, "macs_ratio": r.macs_ratio, "params_ratio": r.params_ratio,
               "prune_seconds": round(seconds, 1),
               "top1_oneshot": one, "top1_bn": acc(bn)}
        out["rows"].append(rec)
        print(f"{row}: MACs {r.macs_ratio:.4f}, top-1 {one:.4f} one-shot, {rec['top1_bn']:.4f} after BN "
              f"re-estimation ({seconds:.0f} s)", flush=True)
    out["command"] = "python benchmarks/anymodel_fmnist.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out["machine"] = machine.describe()
    out["date"] = time.strftime("%Y-%m-%d")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(report(out))
    print(args.out + ".md")
    return 0


def report(out: dict) -> str:
    t, d = out["train"], out["dense"]
    lines = [f"# A network outside the zoo on Fashion-MNIST: one-shot pruning to {out['target']:g} of the MACs", "",
             f"`{out['model']}` ({out['kind']}, constructor arguments {json.dumps(out['kwargs'])}; hard-coded widths, "
             f"no width fields), trained {t['epochs']:g} epochs ({t['steps']} steps, {t['seconds']:.0f} s) with the "
             f"pipeline's Fashion-MNIST recipe, then pruned one-shot by each row with {out['calibration_images']} "
             f"calibration images (training split, seed 0); test accuracy on the 10,000 test images, no fine-tuning.",
             "", f"Command: `{out['command']}`  ", f"Machine: {out['machine']}; {out['date']}.", "",
             f"Dense: top-1 {100 * d['top1']:.2f}%, {d['macs']:,} MACs, {d['params']:,} params.", "",
             "| row | MACs kept | params kept | top-1 one-shot | top-1 after BN re-estimation | prune time |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lines.append(f"| {r['row']} | {r['macs_ratio']:.4f} | {r['params_ratio']:.4f} | {100 * r['top1_oneshot']:.2f}% "
                     f"| {100 * r['top1_bn']:.2f}% | {r['prune_seconds']:.0f} s |")
    lines += ["", "Rows: `hobs` (H-OBS, default options: global allocation, OBS compensation, sequential refit), "
              "`hobs_nohessian` (its ablation without second-order information), `magnitude-uniform` / "
              "`magnitude-global` (group L2 norm, one keep ratio / one global threshold). BN re-estimation: "
              "`hobs_jax.stats.reestimate_bn` on the calibration images. Timings on a shared CPU are noisy."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
