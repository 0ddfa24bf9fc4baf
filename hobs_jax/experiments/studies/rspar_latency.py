"""R-SPAR in latency mode: requested vs measured end-to-end speedup on this device.

Steps (ResNet-50 at 224x224 by default, the plan's 3.10x latency target):

1. the per-layer latency table (``hobs_jax.rspar.latency.measure_lut``, the same as
   ``benchmarks/latency_lut.py``) at ``--batch``, cached at ``--lut`` and reused when
   present (R-SPAR refuses, in one line, a table measured for another model, input,
   widths or device);
2. calibration: ``--calib`` Fashion-MNIST training images resized to the input size,
   grey replicated to 3 channels; weights random (seed 0, 10 classes) with BatchNorm
   statistics estimated on those images, as in ``benchmarks/hobs_cost.py`` (the
   labels feed R-SPAR's reward, which is meaningless for random weights: this run
   checks the *latency* mechanics, not accuracy);
3. ``rspar`` with ``budget='latency'`` at target = 1 / ``--speedup`` of the table's
   dense time, pruning by H-OBS;
4. the dense and the pruned network timed at ``--batch`` (jitted, round-robin
   medians, ``hobs_jax.experiments.studies.block_ell.time_group``): the measured speedup, its
   deviation from the requested one (goal: within 10%) and the table's prediction.

Output: the run record ``docs/results/records/rspar_latency.json`` (one record per
model/size/batch/speedup, merged) and the table built from it through ResultTable,
``docs/results/rspar_latency.{json,md,tex}`` (``--render-only`` rebuilds it). Wall times depend on the machine's
load, recorded with every run; latency tables should be built on an idle machine.

    python benchmarks/rspar_latency.py                  # ResNet-50, 224, 3.10x
    python benchmarks/rspar_latency.py --model resnet20 --size 28 --speedup 2 \\
        --calib 96 --reward_images 32 --episodes 6 --warmup 3 --lut /tmp/lut_r20.json \\
        --out /tmp/rspar_latency                                      # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from hobs_jax.experiments import machine, studies
from hobs_jax.experiments.table import Column, ResultTable

NAME = "rspar_latency"


def calibration(size: int, n: int, channels: int):
    """(images [n, size, size, channels] float32, labels [n]) from Fashion-MNIST train."""
    from hobs_jax.data import get_source

    src = get_source("fashion_mnist", resize_to=(size, size), channels=channels)
    from hobs_jax.data import sample_indices

    idx = sample_indices(src.size("train"), n, 0)  # as the calibrate stage
    x, y = src.batch("train", idx, train=False)
    return np.asarray(x, np.float32), np.asarray(y)


def run(args) -> dict:
    import jax
    import jax.numpy as jnp

    from hobs_jax import macs, models
    from hobs_jax.experiments.studies.block_ell import time_group
    from hobs_jax.methods import api
    from hobs_jax.methods.base import Calibration
    from hobs_jax.rspar.latency import measure_lut
    from hobs_jax.stats import reestimate_bn

    t_start = time.perf_counter()
    channels = 1 if args.size == 28 else 3  # Fashion-MNIST as is, or resized RGB
    x, y = calibration(args.size, args.calib, channels)
    model = models.build(args.model, num_classes=10, in_channels=channels)
    shape = (1, args.size, args.size, channels)
    variables = models.random_variables(model, shape, seed=0)
    bs = 32
    variables = jax.device_get(reestimate_bn(model, variables,
                                             [x[i:i + bs] for i in range(0, len(x), bs)]))
    lut_path = Path(args.lut)
    lut_built = None
    if not lut_path.exists():
        t0 = time.perf_counter()
        load0 = machine.load_1min()
        table = measure_lut(args.model, variables, shape, batch=args.batch, points=args.points,
                            reps=args.reps)
        table["seconds_to_build"] = time.perf_counter() - t0
        lut_path.parent.mkdir(parents=True, exist_ok=True)
        lut_path.write_text(json.dumps(table, indent=1))
        lut_built = {"seconds": round(table["seconds_to_build"], 1), "load_avg_1m": [load0, machine.load_1min()]}
        print(f"latency table: {len(table['layers'])} layers, dense "
              f"{table['dense_seconds'] * 1e3:.1f} ms, built in {table['seconds_to_build']:.0f} s",
              flush=True)
    table = json.loads(lut_path.read_text())
    target = 1.0 / args.speedup
    options = dict(budget="latency", latency_lut=str(lut_path), episodes=args.episodes,
                   warmup=args.warmup, grid=args.grid, reward_images=args.reward_images,
                   progress=False, calib_batch_size=bs)
    options.update(json.loads(args.options or "{}"))
    load_search = machine.load_1min()
    t0 = time.perf_counter()
    result = api.prune("rspar", args.model, variables, target=target,
                       calib=Calibration(x, y), options=options, input_shape=shape)
    search_s = time.perf_counter() - t0
    info = result.outcome.info.get("rspar", {})
    pruned, pvars = result.model, result.variables

    rng = np.random.default_rng(1)
    xs = [jnp.asarray(rng.standard_normal((args.batch,) + shape[1:]), jnp.float32)
          for _ in range(2)]
    dense_fn = jax.jit(lambda v, a: model.apply(v, a, train=False))
    pruned_fn = jax.jit(lambda v, a: pruned.apply(v, a, train=False))
    load_time = machine.load_1min()
    dense_ms, sparse, timing = time_group(
        dense_fn, [(variables, a) for a in xs], {"pruned": (pruned_fn, [(pvars, a) for a in xs])},
        args.iters, warmup=2, min_ms=args.min_ms, max_iters=max(args.iters, 200))
    measured = dense_ms / sparse["pruned"]
    report = macs.count(pruned, pvars, shape)
    dense_report = macs.count(model, variables, shape)
    predicted = info.get("budget_ratio")
    rec = {
        "model": args.model, "input": f"{args.size}x{args.size}x{channels}", "batch": args.batch,
        "requested_speedup": args.speedup, "target_latency_ratio": round(target, 4),
        "table_latency_ratio": None if predicted is None else round(float(predicted), 4),
        "table_speedup": None if not predicted else round(1.0 / float(predicted), 3),
        "dense_ms": round(dense_ms, 3), "pruned_ms": round(sparse["pruned"], 3),
        "measured_speedup": round(measured, 3),
        "deviation": round(measured / args.speedup - 1.0, 4),
        "within_10pct": bool(abs(measured / args.speedup - 1.0) <= 0.10),
        "macs_ratio": round(report.macs / dense_report.macs, 4),
        "params_ratio": round(report.params / dense_report.params, 4),
        "table_dense_ms": round(table["dense_seconds"] * 1e3, 3),
        "table_rest_ms": round(table["rest_seconds"] * 1e3, 3),
        "search_seconds": round(search_s, 1), "episodes": args.episodes,
        "reward_images": args.reward_images, "calibration_images": args.calib,
        "timing": timing, "load_avg_1m": {"search": load_search, "timing": load_time,
                                          "end": machine.load_1min()},
        "lut": str(lut_path), "lut_built": lut_built, "device": table["device"],
        "jax_version": jax.__version__, "total_seconds": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/rspar_latency.py " + shlex.join(args.argv),
    }
    print(f"requested {args.speedup:.2f}x, table says {rec['table_speedup']}x, measured "
          f"{measured:.2f}x ({dense_ms:.1f} -> {sparse['pruned']:.1f} ms at batch {args.batch}); "
          f"MACs kept {rec['macs_ratio']:.3f}; search {search_s:.0f} s", flush=True)
    return rec


def from_legacy(records: list[dict]) -> tuple[list[dict], dict]:
    """Rows of the run record (``docs/results/records/rspar_latency.json``: one record per
    model/size/batch/speedup/device, merged across runs), each naming its command as source."""
    rows: list[dict] = []
    sources: dict[str, dict] = {}
    for r in records:
        key = f"rspar_latency#{len(sources) + 1}" if r["command"] not in [v["command"] for v in sources.values()] \
            else next(k for k, v in sources.items() if v["command"] == r["command"])
        sources.setdefault(key, {"command": r["command"], "jax": r.get("jax_version")})
        rows.append(dict(r, source=key, within=("yes" if r["within_10pct"] else "no"),
                         load=f"{r['load_avg_1m']['search']}, {r['load_avg_1m']['timing']}"))
    return rows, sources


def table(rows, sources, name: str = "rspar_latency") -> ResultTable:
    """Requested vs measured speedup, one row per model/input/batch/speedup; the context is
    the device (rows of another device are refused: a speedup belongs to its device)."""
    t = ResultTable(name, "R-SPAR latency budget: requested vs measured speedup",
                    [Column("model", "model"), Column("input", "input"), Column("batch", "batch", "int"),
                     Column("requested_speedup", "requested", "speedup"),
                     Column("table_speedup", "table predicts", "speedup"),
                     Column("measured_speedup", "measured", "speedup", best="max"),
                     Column("deviation", "deviation (%)", "points", 1), Column("within", "within 10%"),
                     Column("dense_ms", "dense ms", "float", 1), Column("pruned_ms", "pruned ms", "float", 1),
                     Column("macs_ratio", "MACs kept", "ratio", 3), Column("search_seconds", "search s", "float", 0),
                     Column("load", "load (search, timing)")],
                    context=("device",), iso_tolerance=None, description=[
                        "R-SPAR allocates per-group sparsity against a per-layer latency table measured on the "
                        "device; the pruned network is then timed against the dense one on the same device "
                        "(jitted, round-robin medians). Weights are random (BN statistics from the calibration "
                        "images): this checks the latency mechanics, not accuracy."])
    t.extend(rows)
    for r in rows:
        t.goal(f"{r['model']} {r['input']} batch {r['batch']}: measured speedup within 10% of the requested "
               f"{r['requested_speedup']:.2f}x", r["within_10pct"], f"{100 * r['deviation']:+.1f}%")
    for r in rows:
        if r.get("lut_built"):
            t.note(f"latency table `{r['lut']}` built in {r['lut_built']['seconds']:.0f} s "
                   f"(load {r['lut_built']['load_avg_1m']})")
    t.add_sources(sources)
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--speedup", type=float, default=3.10, help="requested latency speedup")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lut", default="runs/lut_resnet50_224_b1.json")
    p.add_argument("--points", type=int, default=4, help="latency table grid per channel axis")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--calib", type=int, default=160)
    p.add_argument("--reward_images", type=int, default=32)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--options", default="", help="JSON dict of further rspar options")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--min_ms", type=float, default=3000.0)
    p.add_argument("--out", default="docs/results/rspar_latency")
    p.add_argument("--render-only", action="store_true", help="rebuild the table from the stored run record")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    out = Path(args.out)
    record = Path(studies.record_path(out.name, str(out.parent)))
    old = json.loads(record.read_text()) if record.exists() else []
    if not args.render_only:
        rec = run(args)
        key = lambda r: (r["model"], r["input"], r["batch"], r["requested_speedup"], r["device"])
        old = [r for r in old if key(r) != key(rec)] + [rec]
        studies.save_record(out.name, old, str(out.parent))
    print(studies.render(sys.modules[__name__], str(out.parent), out.name))


if __name__ == "__main__":
    main()
