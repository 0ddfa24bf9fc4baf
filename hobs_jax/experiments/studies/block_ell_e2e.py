"""End-to-end latency: a channel-pruned ResNet-50 with and without Block-ELL 1x1 convs.

Model: ResNet-50 at 224x224 (random weights), channel-pruned to ``--target`` (0.5) of its
MACs by the ``magnitude`` method (group L2 scores, uniform allocation over the channel
graph's groups, kept counts rounded up to multiples of ``--multiple`` = 64 so that both
block sizes tile every layer) and ``hobs_jax.graph.apply_plan`` surgery
(``hobs_jax.methods.api.prune``); the achieved MAC ratio is reported. Sparse variant:
the same model with every bottleneck 1x1 conv (conv1, conv3 and the strided downsample
conv) converted to balanced Block-ELL by ``hobs_jax.sparse.to_block_ell`` (magnitude,
block b, block sparsity s); the 3x3 convs, the stem and fc stay dense.

Timing: every configuration is jitted once, warmed up, then dense and all sparse
variants of one batch size run round-robin (``block_until_ready``), median of the runs;
speedup = dense ms / sparse ms from the same run (shared, noisy machines). The sparse
model is also checked against the dense model with the dropped blocks zeroed.

Output: the run record ``docs/results/records/block_ell_e2e.json`` (records merged by
device, backend, dtype, model, batch, block, sparsity) and, built from it through
ResultTable, one ``docs/results/block_ell_e2e_<device>.{json,md,tex}`` table per device
(:mod:`~hobs_jax.experiments.studies.block_ell_tables`; ``--render-only`` rebuilds them).

Run (the CPU figures committed in docs/results):
    python benchmarks/block_ell_e2e.py --quick
Full (batches 1, 32, 256; about 10 minutes on 2 CPU cores with --iters 3):
    python benchmarks/block_ell_e2e.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import macs, models, sparse
from hobs_jax.experiments import machine
from hobs_jax.experiments.studies import block_ell_tables
from hobs_jax.experiments.studies.block_ell import LAST_DEVICE_TIMES, time_group
from hobs_jax.methods import api as methods_api
from kernels import select_config

MODEL = "resnet50"


def bottleneck_1x1(path: str) -> bool:
    return path.endswith(("conv1", "conv3", "downsample.0")) and path.startswith("layer")


def layer_backends(model, batch: int, size: int, dtype=jnp.float32) -> str:
    """The kernel backends ``backend='auto'`` picks for the model's Block-ELL layers."""
    names = set()
    for path, pattern in model.block_ell.items():
        stage = int(path.split(".")[0][len("layer"):])
        m = batch * (size // 4 // 2 ** (stage - 1)) ** 2  # stage s runs at 56 / 2^(s-1)
        names.add(select_config("auto", m, pattern.meta, pattern.slots, dtype).backend)
    return "+".join(sorted(names))


def run(args, on_batch=None) -> list[dict]:
    shape1 = (1, args.size, args.size, 3)
    full_model = models.build(MODEL)
    result = methods_api.prune("magnitude", MODEL, models.random_variables(full_model, shape1),
                               target=args.target, round_to=args.multiple, input_shape=shape1)
    model, variables = result.model, result.variables
    report = macs.count(model, jax.eval_shape(lambda: variables), shape1)
    pruned = report.macs
    bell_macs = sum(l.macs for l in report.layers if bottleneck_1x1(l.path.replace("/", ".")))
    configs = [(b, s) for b in args.blocks for s in args.sparsities]
    sparse_models = {}
    for b, s in configs:
        sm, sv = sparse.to_block_ell(model, variables, s, b, layers=bottleneck_1x1,
                                     input_shape=shape1)
        _, zeroed = sparse.to_dense(sm, sv, input_shape=shape1)
        sparse_models[(b, s)] = (sm, sv, zeroed)
    device = str(jax.devices()[0].device_kind)
    command = "python benchmarks/block_ell_e2e.py " + shlex.join(args.argv)
    meta = dict(command=command.strip(), cpu_model=machine.cpu_model(), jax_version=jax.__version__,
                image_size=args.size, macs_ratio=round(result.macs_ratio, 4),
                widths=",".join(map(str, sorted(set(model.widths.values())))),
                pruning=f"magnitude plan (uniform, round_to {args.multiple}) + apply_plan",
                bell_macs_fraction=round(bell_macs / pruned, 4),
                layers=len(next(iter(sparse_models.values()))[0].block_ell))
    dt = jnp.dtype(args.dtype)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(dt) if jnp.issubdtype(
        a.dtype, jnp.floating) else a, tree)
    variables = cast(variables)
    sparse_models = {key: (sm, cast(sv), cast(zeroed))
                     for key, (sm, sv, zeroed) in sparse_models.items()}
    tol = 1e-4 if dt == jnp.float32 else 5e-2  # bf16 sums in a different order
    dense_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    records = []
    for batch in args.batches:
        rng = np.random.default_rng(batch)
        copies = 3 if jax.default_backend() == "gpu" else 1  # rotate inputs on a GPU
        xs = [jnp.asarray(rng.standard_normal((batch, args.size, args.size, 3)), dt)
              for _ in range(copies)]
        x = xs[0]
        fns = {}
        t0 = time.time()
        for (b, s), (sm, sv, zeroed) in sparse_models.items():
            fn = jax.jit(lambda v, x, sm=sm: sm.apply(v, x, train=False))
            if batch == args.batches[0]:  # correctness guard, once per configuration
                ys, yd = fn(sv, x), dense_fn(zeroed, x)
                err = float(jnp.abs(ys - yd).max() / jnp.abs(yd).max())
                if not err <= tol:
                    raise RuntimeError(f"b={b} s={s}: sparse vs zeroed dense rel diff {err:.2e}")
            fns[(b, s)] = (fn, [(sv, xi) for xi in xs])
        iters = args.iters if batch < 256 else max(2, args.iters - 2)
        dense_ms, sparse_ms, timing = time_group(dense_fn, [(variables, xi) for xi in xs], fns,
                                                 iters, args.warmup, min_ms=0.0,
                                                 max_iters=iters)
        seconds = round(time.time() - t0, 1)
        load = machine.load_1min()  # a shared machine: how busy it was
        if timing == "device-span":
            d = LAST_DEVICE_TIMES["dense"]
            print(f"batch {batch}: dense device span {d['span_ms']:.3f} ms, busy "
                  f"{d['busy_ms']:.3f} ms, {d['kernels']:.0f} kernels", flush=True)
        print(f"batch {batch}: dense {dense_ms:.1f} ms; " + ", ".join(
            f"b={b} s={s}: {dense_ms / ms:.2f}x" for (b, s), ms in sparse_ms.items())
              + f" ({seconds:.0f} s)", flush=True)
        busy = {}
        if timing == "device-span":  # kernel time alone, launch gaps excluded
            busy = {"dense_busy_ms": round(LAST_DEVICE_TIMES["dense"]["busy_ms"], 4),
                    "kernels_dense": LAST_DEVICE_TIMES["dense"]["kernels"]}
        for (b, s), ms in sparse_ms.items():
            sm = sparse_models[(b, s)][0]
            if busy:
                busy_s = LAST_DEVICE_TIMES[(b, s)]
                busy.update(sparse_busy_ms=round(busy_s["busy_ms"], 4),
                            busy_speedup=round(busy["dense_busy_ms"] / busy_s["busy_ms"], 4),
                            kernels_sparse=busy_s["kernels"])
            records.append(dict(device=device, backend=layer_backends(sm, batch, args.size, dt),
                                dtype=args.dtype, batch=batch, timing=timing,
                                model=f"{MODEL} (channel-pruned to {args.target:.0%} MACs)",
                                sparsity=s, block=b, dense_ms=round(dense_ms, 3),
                                sparse_ms=round(ms, 3), speedup=round(dense_ms / ms, 4),
                                batch_seconds=seconds, load_avg_1m=load, **busy, **meta))
        if on_batch is not None:
            on_batch(records)  # an interrupted run keeps the batches it measured
    return records


def record_key(r: dict) -> tuple:
    return (r["device"], r["backend"], r["dtype"], r["model"], r["image_size"], r["batch"],
            r["block"], round(float(r["sparsity"]), 4))


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    by_key = {record_key(r): r for r in old}
    by_key.update({record_key(r): r for r in new})
    return sorted(by_key.values(), key=lambda r: (r["device"], r["image_size"], r["batch"],
                                                   r["block"], r["sparsity"], r["backend"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="batches 1 and 32, 3 timed rounds (about 5 minutes on 2 CPU cores)")
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--blocks", default="32,64")
    p.add_argument("--sparsities", default="0.75,0.9")
    p.add_argument("--target", type=float, default=0.5, help="kept MAC fraction of the pruning")
    p.add_argument("--multiple", type=int, default=64, help="round kept channels to this")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights and activations (bfloat16 uses the Mosaic GPU kernel)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="docs/results/records/block_ell_e2e.json", help="the run record")
    p.add_argument("--results", default="docs/results",
                   help="folder of the tables (block_ell_tables; its records/ holds block_ell.json)")
    p.add_argument("--render-only", action="store_true", help="only rebuild the tables from the run records")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick:
        args.batches, args.iters = "1,32", min(args.iters, 3)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.blocks = [int(b) for b in args.blocks.split(",")]
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    def save(new: list[dict]) -> list[dict]:
        records = merge(old, new)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1) + "\n")
        tmp.replace(out)
        block_ell_tables.render(args.results)
        return records

    records = old if args.render_only else save(run(args, on_batch=save))
    if args.render_only:
        block_ell_tables.render(args.results)
    print(f"{len(records)} records -> {out}; tables block_ell_e2e_* under {args.results}")


if __name__ == "__main__":
    main()
