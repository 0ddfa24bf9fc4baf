"""Block-ELL SpMM vs dense ``jnp.dot`` at the same shape.

Shapes: 4096x4096x4096; the 1x1 convs of ResNet-50's bottlenecks (M = batch x H x
W, torchvision v1.5 layout: stride on the 3x3, so a stage's first conv1 runs at
the previous resolution); ViT-B/16 MLPs (M = batch x 197, 768->3072 and
3072->768). Block sizes 16/32/64/128, sparsity 50-95 %, float32 and bfloat16,
every backend available on the device (the Pallas interpreter is a CPU test
tool, not a speed path, and is skipped).

Timing: compile + warm-up, then ``--iters`` alternating dense/sparse runs
(``block_until_ready``), median of each; the speedup is dense/sparse from the
same run (these machines are shared and noisy).

Output: the run record ``docs/results/records/block_ell.json`` (a list of records
keyed by device + backend + dtype + shape + block + sparsity, merged with what is
there, so CPU runs keep GPU rows and vice versa) and the tables built from it
through ResultTable, one set per device (:mod:`~hobs_jax.experiments.studies.block_ell_tables`;
``--render-only`` rebuilds them from the record).

Run (CPU sweep committed in docs/results):
    python benchmarks/block_ell.py --quick
Full sweep (GPU):
    python benchmarks/block_ell.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Hashable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hobs_jax.experiments import machine, studies
from hobs_jax.experiments.studies import block_ell_tables
from hobs_jax.experiments.studies.block_ell_tables import GOAL_SPARSITIES, GPU_BACKENDS, break_even
from kernels import bell_matmul_parts, keep_per_row, random_balanced
from kernels.config import available_backends
from kernels.devtime import device_times_many
from kernels.operands import forward_index
from kernels.ops import select_config

__all__ = ["GOAL_SPARSITIES", "GPU_BACKENDS", "break_even", "main", "merge", "resnet50_1x1_shapes"]


def resnet50_1x1_shapes(batch: int) -> list[tuple[str, int, int, int]]:
    """(label, M, K, N) of every distinct 1x1 conv in ResNet-50's bottlenecks.

    Convs with the same (M, K, N) share one entry, labelled with all their names.
    """
    stages = [("layer1", 64, 256, 56), ("layer2", 128, 512, 28),
              ("layer3", 256, 1024, 14), ("layer4", 512, 2048, 7)]
    names: dict[tuple[int, int, int], list[str]] = {}
    prev_out, prev_hw = 64, 56  # stem: 64 channels at 56x56 after the max-pool
    for stage, inner, outer, hw in stages:
        # first block: conv1 at the input resolution; conv3 and downsample at hw
        for label, m, k, n in [(f"{stage}.0.conv1", batch * prev_hw * prev_hw, prev_out, inner),
                               (f"{stage}.conv1", batch * hw * hw, outer, inner),
                               (f"{stage}.conv3", batch * hw * hw, inner, outer),
                               (f"{stage}.0.downsample", batch * hw * hw, prev_out, outer)]:
            names.setdefault((m, k, n), []).append(label)
        prev_out, prev_hw = outer, hw
    return [("resnet50." + "+".join(v), m, k, n) for (m, k, n), v in names.items()]


def vit_b_mlp_shapes(batch: int) -> list[tuple[str, int, int, int]]:
    m = batch * 197
    return [("vit_b.mlp.fc1", m, 768, 3072), ("vit_b.mlp.fc2", m, 3072, 768)]


QUICK_RESNET = ("resnet50.layer1.conv1", "resnet50.layer2.conv3", "resnet50.layer3.conv1",
                "resnet50.layer4.conv3")  # one per stage, K and N both >= 64


# The last GPU group's full figures (diagnostics), keyed "dense" and by time_group's sparse keys.
LAST_DEVICE_TIMES: dict[Hashable, dict] = {}


def _arg_sets(args) -> list[tuple]:
    """``args`` is one argument tuple or a list of them (rotated call by call)."""
    return list(args) if isinstance(args, list) else [args]


def time_group(dense_fn, dense_args, sparse: dict, iters: int, warmup: int,
               min_ms: float = 200.0, max_iters: int = 40):
    """Median ms of the dense run and of every sparse run.

    ``dense_args`` and each sparse entry's args are an argument tuple or a list of
    tuples that the calls rotate over (several input copies, so a GPU's L2 does not
    serve the same X every call).

    On a GPU: device time from a profiler trace (``kernels.devtime``: first kernel
    start to last kernel end of each call, median of 16 calls per function), since a
    host clock around ``block_until_ready`` there adds 0.4-0.8 ms of synchronisation
    per call. Elsewhere (CPU): wall time, round-robin: each round runs dense and every
    sparse function once, rotating the order, so load changes on a shared machine hit
    all of them alike; at least ``iters`` rounds, more (up to ``max_iters``) until the
    dense runs add up to ``min_ms``.
    Returns (dense_ms, {name: sparse_ms}, timing) with timing "device-span" or "wall".
    """
    fns = [("dense", dense_fn, _arg_sets(dense_args))] + [
        (k, f, _arg_sets(a)) for k, (f, a) in sparse.items()]
    if jax.default_backend() == "gpu":
        t = device_times_many({name: (fn, sets) for name, fn, sets in fns}, calls=16,
                              warmup=max(warmup, 2))
        if t is not None:
            LAST_DEVICE_TIMES.clear()
            LAST_DEVICE_TIMES.update(t)
            spans = {name: v["span_ms"] for name, v in t.items()}
            return spans.pop("dense"), spans, "device-span"
    for _ in range(warmup):
        for _, fn, sets in fns:
            jax.block_until_ready(fn(*sets[0]))
    times: dict[str, list[float]] = {name: [] for name, _, _ in fns}
    i = 0
    while i < iters or (sum(times["dense"]) < min_ms and i < max_iters):
        shift = i % len(fns)
        for name, fn, sets in fns[shift:] + fns[:shift]:
            args = sets[i % len(sets)]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - t0) * 1e3)
        i += 1
    med = {name: statistics.median(t) for name, t in times.items()}
    return med.pop("dense"), med, "wall"


def record_key(r: dict) -> tuple:
    return (r["device"], r["backend"], r["dtype"], r["m"], r["k"], r["n"], r["block"],
            round(float(r["sparsity"]), 4), r.get("index", "in-graph"))


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    by_key = {record_key(r): r for r in old}
    by_key.update({record_key(r): r for r in new})
    return sorted(by_key.values(), key=lambda r: (r["device"], r["dtype"], r["label"],
                                                   r["block"], r["sparsity"], r["backend"]))


def build_sweep(args) -> list[tuple[str, int, int, int, str, int, float]]:
    """(label, m, k, n, dtype, block, sparsity) points."""
    shapes = []
    if "square" in args.shapes:
        shapes.append(("square4096", 4096, 4096, 4096))
    if "resnet50" in args.shapes:
        rn = resnet50_1x1_shapes(args.batch)
        if args.quick:
            rn = [s for s in rn if set(s[0][len("resnet50."):].split("+")) &
                  {q[len("resnet50."):] for q in QUICK_RESNET}]
        shapes += rn
    if "vit_b" in args.shapes:
        shapes += vit_b_mlp_shapes(args.vit_batch)
    points = []
    for dtype in args.dtypes:
        for label, m, k, n in shapes:
            if args.quick and label == "square4096" and dtype != "float32":
                continue  # 4096^3 bf16 on 2 CPU cores does not fit the quick budget
            for b in args.blocks:
                if args.quick and (label == "square4096" or dtype != "float32") \
                        and b not in (32, 64):
                    continue
                c_blocks = -(-n // b)
                for s in args.sparsities:
                    achieved = 1.0 - keep_per_row(c_blocks, s) / c_blocks
                    if abs(achieved - s) > 0.05:
                        continue  # not representable with this many block-columns
                    points.append((label, m, k, n, dtype, b, s))
    return points


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sweep: 4096^3 fp32 at b=32/64, 4 ResNet-50 shapes and the "
                        "ViT MLPs (batch 8), bf16 at b=32/64 only")
    p.add_argument("--shapes", default="square,resnet50,vit_b")
    p.add_argument("--blocks", default="16,32,64,128")
    p.add_argument("--sparsities", default=None,
                   help="default 0.5,0.6,0.75,0.9,0.95 (--quick: 0.5,0.75,0.9,0.95)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default="",
                   help="comma list; default: every available backend but the interpreter")
    p.add_argument("--batch", type=int, default=32, help="ResNet-50 batch")
    p.add_argument("--vit-batch", type=int, default=None, help="ViT batch (default --batch)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--index", choices=("static", "in-graph"), default="static",
                   help="GPU kernels: forward index precomputed once for the fixed pattern "
                        "(as the model layers do) or re-derived from col_idx in every call")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="docs/results/block_ell")
    p.add_argument("--render-only", action="store_true",
                   help="only rebuild the tables from the stored run record")
    args = p.parse_args(argv)
    args.shapes = args.shapes.split(",")
    args.blocks = [int(b) for b in args.blocks.split(",")]
    if args.sparsities is None:
        args.sparsities = "0.5,0.75,0.9,0.95" if args.quick else "0.5,0.6,0.75,0.9,0.95"
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.dtypes = args.dtypes.split(",")
    if args.vit_batch is None:
        args.vit_batch = 8 if args.quick else args.batch
    if args.quick:
        args.iters = min(args.iters, 3)

    out = Path(args.out)
    if args.render_only:
        print("\n".join(block_ell_tables.render(str(out.parent))))
        return
    plat = jax.default_backend()
    device = str(jax.devices()[0].device_kind)
    command = "python benchmarks/block_ell.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    meta = {"command": command.strip(), "cpu_model": machine.cpu_model(), "jax_version": jax.__version__}
    points = build_sweep(args)
    json_path = Path(studies.record_path(out.name, str(out.parent)))
    old = json.loads(json_path.read_text()) if json_path.exists() else []
    new: list[dict] = []
    rng = np.random.default_rng(0)
    cache: dict = {}
    for label, m, k, n, dtype, b, s in tqdm(points, desc="block-ell", unit="pt"):
        dt = jnp.dtype(dtype)
        avail = available_backends(plat, dt, b)
        wanted = args.backends.split(",") if args.backends else [
            be for be in avail if be not in ("pallas_interpret", "reference", "xla_dense")]
        if (m, k, dtype) not in cache:
            cache.clear()
            copies = 3 if plat == "gpu" else 1  # rotate X on a GPU (L2 holds one copy)
            cache[(m, k, dtype)] = [jnp.asarray(rng.standard_normal((m, k)), dt)
                                    for _ in range(copies)]
        xs = cache[(m, k, dtype)]
        w = random_balanced(k, n, b, s, dt, seed=1)
        wd = w.todense()
        # The pattern is fixed after pruning, so layers pass its forward index as
        # constants (hobs_jax.models.sparse); --index in-graph re-derives it per call.
        index = forward_index(np.asarray(w.col_idx), w.meta) if args.index == "static" \
            else None
        dense_fn = jax.jit(jnp.dot)
        sparse = {}
        for be in wanted:
            if be not in avail:
                continue
            cfg = select_config(be, m, w.meta, w.slots, dt)
            fn = jax.jit(lambda a, v, c, ix, cfg=cfg, meta_=w.meta:
                         bell_matmul_parts(a, v, c, meta_, config=cfg, index=ix))
            sparse[be] = (fn, [(x, w.values, w.col_idx, index) for x in xs])
        try:
            dense_ms, sparse_ms, timing = time_group(dense_fn, [(x, wd) for x in xs], sparse,
                                                     args.iters, args.warmup)
        except Exception as err:  # report and continue the sweep
            tqdm.write(f"{label} b={b} s={s}: {type(err).__name__}: {err}")
            continue
        achieved = round(1.0 - w.slots / w.meta.n_col_blocks, 4)
        for be, ms in sparse_ms.items():
            new.append(dict(device=device, backend=be, dtype=dtype, m=m, k=k, n=n, block=b,
                            sparsity=s, dense_ms=dense_ms, sparse_ms=ms,
                            speedup=dense_ms / ms, label=label, achieved_sparsity=achieved,
                            timing=timing, index=args.index, col_slots=w.meta.col_slots,
                            **meta))
        save(out, old, new)  # after every point: an interrupted sweep keeps what it measured
    records = save(out, old, new)
    print(f"{len(new)} new records, {len(records)} total -> {studies.record_path(out.name, str(out.parent))} "
          f"and the tables of {out.parent} (block_ell_tables)")


def save(out: Path, old: list[dict], new: list[dict]) -> list[dict]:
    """Merge ``new`` into ``old``, rewrite the run record (``OUT's folder/records/NAME.json``)
    and every table built from it (:mod:`~hobs_jax.experiments.studies.block_ell_tables`)."""
    records = merge(old, new)
    studies.save_record(out.name, records, str(out.parent))
    block_ell_tables.render(str(out.parent))
    return records


if __name__ == "__main__":
    main()
