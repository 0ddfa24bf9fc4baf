"""Aligned and latency-budgeted allocation on the trained Fashion-MNIST ResNets (issue 18,
points 3-4): one H-OBS selection (the Hessians and removal paths, computed once), then one
allocation per row, each pruned, BN re-estimated on the calibration images and evaluated
on the test set, saved, and finally every row timed against dense in one interleaved run of
``hobs_jax.bench`` (XLA and ONNX Runtime, batch 1 and 64, one thread, CPU time: the suite's
mode for a shared machine).

Rows: ``LABEL=macs:TARGET:QUANTUM`` (the MACs budget on the grid of multiples of
QUANTUM; 1 = unaligned, today's allocation), ``LABEL=macs:TARGET:QUANTUM:RUNTIME`` (the
same MACs budget, channels ranked by saliency per second saved in RUNTIME's latency table:
the global allocator's ``rank='latency'``) or ``LABEL=latency:RUNTIME:TARGET:QUANTUM``
(the latency table of RUNTIME at ``--table-batch``, measured on one core by CPU time and
cached, ``hobs_jax.methods.latency_table.cached_table``), with ``--allocation`` global
(default) or uniform. ``LABEL=latency:RUNTIME:TARGET:QUANTUM:measured`` closes the same
budget by measurement (:mod:`hobs_jax.allocation.feedback`): each candidate allocation is
timed against dense in RUNTIME at ``--table-batch`` (``hobs_jax.bench``, one thread, CPU
time, ``--feedback-rounds`` x ``--feedback-iters`` calls) and the fraction asked of the
table corrected until the measured one is within ``--feedback-tol`` of TARGET (at most
``--feedback-max`` allocations); the row records every round.

    python benchmarks/aligned_allocation.py --config configs/quickstart.py \\
        --workdir runs/aligned_r20 --rows hobs=macs:0.5:1,hobs_q8=macs:0.5:8 --out docs/results/aligned_r20

The workdir gets the pipeline's train and calibrate stages (the same checkpoint and
calibration images as the pipeline; ``--init`` overrides the checkpoint) and one model
directory per row; the run record (rows and the suite's speedups) goes to ``OUT's
folder/records/NAME.json`` and the table built from it through ResultTable to
``--out``.{json,md,tex} (``--render-only`` rebuilds it from the record).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

from hobs_jax.experiments import studies


def parse_rows(text: str) -> list[dict]:
    rows = []
    for item in text.split(","):
        label, _, spec = item.partition("=")
        parts = spec.split(":")
        if parts[0] == "macs" and len(parts) in (3, 4):
            rows.append({"label": label, "metric": "macs", "runtime": parts[3] if len(parts) == 4 else None,
                         "target": float(parts[1]), "quantum": int(parts[2])})
        elif parts[0] == "latency" and (len(parts) == 4 or (len(parts) == 5 and parts[4] == "measured")):
            rows.append({"label": label, "metric": "latency", "runtime": parts[1], "target": float(parts[2]),
                         "quantum": int(parts[3]), "measured": len(parts) == 5})
        else:
            raise ValueError(f"row {item!r}: use LABEL=macs:TARGET:QUANTUM[:RUNTIME] or "
                             "LABEL=latency:RUNTIME:TARGET:QUANTUM[:measured]")
    return rows


def load_config(path: str, init: str):
    from hobs_jax.experiments.validate import load_config_file

    c = load_config_file(path).get_config()
    with c.unlocked():
        c.stages = "train,calibrate"
        if init:
            c.init.kind, c.init.path = "checkpoint", init
    return c


def main(argv=None):
    from hobs_jax.allocation.feedback import TOLERANCE

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/quickstart.py")
    p.add_argument("--init", default="", help="checkpoint directory (default: the config's)")
    p.add_argument("--workdir", default="", help="required unless --render-only")
    p.add_argument("--rows", default="", help="required unless --render-only")
    p.add_argument("--allocation", default="global", choices=("global", "uniform"))
    p.add_argument("--table-batch", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--feedback-tol", type=float, default=TOLERANCE,
                   help="measured rows: stop when the measured time fraction is this close (relative)")
    p.add_argument("--feedback-max", type=int, default=4, help="measured rows: at most this many allocations")
    p.add_argument("--feedback-rounds", type=int, default=3)
    p.add_argument("--feedback-iters", type=int, default=24)
    p.add_argument("--out", required=True)
    p.add_argument("--render-only", action="store_true",
                   help="rebuild OUT's table from its stored run record (OUT's folder/records/NAME.json)")
    args = p.parse_args(argv)
    if args.render_only:
        for path in studies.render_prefix(sys.modules[__name__], args.out):
            print(path)
        return
    if not args.workdir or not args.rows:
        p.error("--workdir and --rows are required to measure (--render-only rebuilds the table alone)")
    rows = parse_rows(args.rows)

    import jax

    from hobs_jax import macs
    from hobs_jax.allocation.latency import LatencyBudget
    from hobs_jax.bench import ModelSpec, Options, run_suite, speedups
    from hobs_jax.graph import apply_plan
    from hobs_jax.methods import get_method, make_task
    from hobs_jax.methods.latency_table import cached_table
    from hobs_jax.pipeline import run as run_pipeline
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.prune_stage import calibration
    from hobs_jax.pipeline.workdir import Workdir
    from hobs_jax.stats import reestimate_bn
    from hobs_jax.train import evaluate

    t_start = time.perf_counter()
    c = load_config(args.config, args.init)
    run_pipeline(c, args.workdir)
    ctx = Context(c, Workdir(args.workdir))
    calib = calibration(ctx)
    model, variables, _ = ctx.load_model("train")
    prunable = ctx.prunable(variables)
    shape = ctx.input_shape
    tables = {}
    for rt in sorted({r["runtime"] for r in rows if r["runtime"]}):
        t0 = time.perf_counter()
        tables[rt] = cached_table(prunable, input_shape=shape, runtime=rt, batch=args.table_batch, threads=1,
                                  clock="cpu", quantum=8, points=5)
        print(f"latency table {rt}: {time.perf_counter() - t0:.0f} s", flush=True)
    options = dict(c.prune.hobs.to_dict(), allocation=args.allocation, progress=False)
    task = make_task("hobs", prunable, target=0.5, calib=calib, options=options, input_shape=shape)
    budgets = {rt: LatencyBudget.for_task(t, task, runtime=rt) for rt, t in tables.items()}
    spec = get_method("hobs")
    t0 = time.perf_counter()
    sel = spec.select(task)
    select_s = time.perf_counter() - t0
    print(f"selection: {select_s:.0f} s", flush=True)
    dense_macs = macs.count(task.model, task.variables, shape)
    results, models = [], [ModelSpec.from_saved(ctx.model_dir("train"), label="dense", input_shape=shape[1:])]
    batches = [x for x, _ in calib.batches(c.calibrate.batch_size)]
    for r in rows:
        change = dict(target=r["target"], round_to=r["quantum"], metric=r["metric"],
                      latency=budgets.get(r["runtime"]))
        s = sel.with_task(**change)
        if r["metric"] == "macs" and r["runtime"]:  # a MACs budget ranked per second saved
            ranked = dataclasses.replace(s.options.allocator, rank="latency")
            s.options = dataclasses.replace(s.options, allocators={**s.options.allocators,
                                                                   s.options.allocation: ranked})
        feedback = None
        try:
            if r.get("measured"):
                res = closed_loop(spec, s, task, ctx, r, args, shape)
                (allocated, out), feedback = res.candidate, res.to_dict()
            else:
                allocated = spec.allocate(s)
                out = spec.finish(s, allocated.keep, allocated)
        except ValueError as e:  # an unreachable latency target: recorded, the other rows go on
            results.append(dict(r, error=str(e).split(";")[0]))
            print(f"{r['label']}: {results[-1]['error']}", flush=True)
            continue
        pruned = apply_plan(task.prunable, out.variables, out.plan, graph=task.graph)
        keep = task.cost.keep_vector({g: len(i) for g, i in out.plan.keep})
        acc1 = float(evaluate(pruned.module, pruned.variables, ctx.eval_loader(), desc=r["label"])["top1"])
        pv = reestimate_bn(pruned.module, pruned.variables, iter(batches))
        acc2 = float(evaluate(pruned.module, pv, ctx.eval_loader(), desc=r["label"])["top1"])
        m = macs.count(pruned.module, pv, shape)
        path = os.path.join(args.workdir, "rows", r["label"])
        ctx.export(path, pruned.module, jax.device_get(pv), out.plan)
        models.append(ModelSpec.from_saved(path, label=r["label"], input_shape=shape[1:]))
        sizes = dict(zip(task.cost.group_ids, task.cost.sizes.astype(int).tolist()))
        rec = dict(r, macs_ratio=m.macs / dense_macs.macs, acc_oneshot=acc1, acc_bn=acc2,
                   predicted={rt: b.ratio(keep) for rt, b in budgets.items()},
                   keep={str(g): int(k) for g, k in zip(task.cost.group_ids, keep)},
                   sizes={str(g): s for g, s in sizes.items()}, **({"feedback": feedback} if feedback else {}))
        results.append(rec)
        print(json.dumps({k: rec[k] for k in ("label", "macs_ratio", "acc_oneshot", "acc_bn", "predicted")}),
              flush=True)
    opts = Options(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), warmup=3, iters=args.iters,
                   rounds=args.rounds, threads=1, clock="cpu", devices=("cpu",))
    suite = run_suite(models, ["xla", "onnxruntime"], opts, out_dir=args.out, baseline="dense")
    from hobs_jax.experiments import bench_tables

    bench_tables.render_run(args.out, baseline="dense")  # the suite's tables through ResultTable
    by = {}
    for rec in results:
        if "error" in rec:
            continue
        for s in speedups(suite.rows, "dense", rec["label"]):
            by[(rec["label"], s["runtime"], s["batch"])] = s["speedup"]
    for rec in results:
        rec["speedup"] = {f"{rt}@{b}": v for (lab, rt, b), v in by.items() if lab == rec["label"]}
    doc = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "config": args.config, "selection_seconds": select_s, "seconds": time.perf_counter() - t_start,
           "device": suite.meta["machine"], "tables": {rt: {k: t[k] for k in ("runtime", "batch", "threads", "clock",
                                                                                 "dense_seconds", "rest_seconds",
                                                                                 "rest_source", "device")}
                                                       for rt, t in tables.items()},
           "rows": results}
    folder, name = os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out)
    studies.save_record(name, json.loads(json.dumps(doc, default=str)), folder)
    for path in studies.render(sys.modules[__name__], folder, name):
        print(path)


def closed_loop(spec, sel, task, ctx, row: dict, args, shape):
    """A latency row closed by measurement (:func:`hobs_jax.methods.measured.allocate_measured`
    on the shared selection): each candidate is exported under ``WORKDIR/feedback/LABEL`` and
    timed against the trained dense network in the row's runtime at ``--table-batch``; the
    timings are journaled there, so an interrupted row resumes without timing its finished
    rounds again."""
    from hobs_jax.methods.measured import allocate_measured, bench_measure, cut_and_save

    scratch = os.path.join(args.workdir, "feedback", row["label"])
    measure = bench_measure(ctx.model_dir("train"), runtime=row["runtime"], batch=args.table_batch,
                            scratch=scratch, export=cut_and_save(task, ctx.export), input_shape=tuple(shape[1:]),
                            rounds=args.feedback_rounds, iters=args.feedback_iters,
                            journal=os.path.join(scratch, "journal.json"))
    return allocate_measured(spec, sel, measure, row["target"], tol=args.feedback_tol, rounds=args.feedback_max,
                             log=lambda m: print(f"{row['label']}: {m}", flush=True))


NAME = "aligned_allocation_r20"
SPEEDUPS = (("xla@1", "XLA b1"), ("xla@64", "XLA b64"), ("onnxruntime@1", "ORT b1"), ("onnxruntime@64", "ORT b64"))


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """Rows of the run record :func:`main` writes (``docs/results/records/NAME.json``): one per
    allocation, with its budget, MACs, accuracy, predicted latency ratios and the suite's
    speedups. A latency-budgeted row's target is a latency fraction (``latency_target``),
    so the iso-MACs rule does not apply to it."""
    from hobs_jax.experiments import machine

    m = doc["device"]
    key = f"aligned_allocation@{m['date'][:16]}"
    rows = []
    for rec in doc["rows"]:
        r = {"label": rec["label"], "quantum": rec["quantum"], "dataset": "fashion_mnist", "split": "test",
             "device": machine.device_key(m), "source": key,
             "budget": rec["metric"] + (("" if not rec["runtime"] else f" ({rec['runtime']})")
                                        if rec["metric"] == "latency" or not rec["runtime"]
                                        else f", ranked in {rec['runtime']}")}
        fb = rec.get("feedback")
        if fb:  # closed by measurement: the fraction finally asked of the table, and how many allocations
            r["budget"] = (f"latency ({rec['runtime']}), measured: {len(fb['rounds'])} allocations, table asked "
                           f"{fb['asked']:.3f}")
        r["target" if rec["metric"] == "macs" else "latency_target"] = rec["target"]
        if rec["runtime"]:
            r["runtime"], r["table_batch"] = rec["runtime"], (doc["tables"].get(rec["runtime"]) or {}).get("batch")
        r["target_shown"] = rec["target"]
        if "error" in rec:
            r["refused"] = rec["error"]
        else:
            r.update(macs_ratio=rec["macs_ratio"], acc_oneshot=rec["acc_oneshot"], acc_bn=rec["acc_bn"],
                     predicted_xla=rec["predicted"].get("xla"), predicted_ort=rec["predicted"].get("onnxruntime"),
                     keep=rec.get("keep"), **{k: rec["speedup"].get(k) for k, _ in SPEEDUPS})
        rows.append(r)
    return rows, {key: {"command": doc["command"], "date": m["date"], "machine": machine.describe(m),
                        "config": doc.get("config"), "selection_seconds": round(doc["selection_seconds"], 1),
                        "seconds": round(doc["seconds"], 1)}}


def table(rows, sources, name: str = NAME):
    """One row per allocation: MACs, test top-1 before and after BN re-estimation, the
    latency tables' predicted ratios and the measured speedups over dense."""
    from hobs_jax.experiments.table import Column, ResultTable

    t = ResultTable(name, "Aligned and latency-budgeted allocation: " + name,
                    [Column("label", "row"), Column("budget", "budget"), Column("target_shown", "target"),
                     Column("quantum", "quantum", "int"), Column("macs_ratio", "MACs", "ratio", 3),
                     Column("acc_oneshot", "top-1 one-shot", "share", 3), Column("acc_bn", "after BN", "share", 3),
                     Column("predicted_xla", "predicted XLA", "ratio", 3),
                     Column("predicted_ort", "predicted ORT", "ratio", 3),
                     *[Column(k, label, "speedup") for k, label in SPEEDUPS]],
                    description=[" ".join(__doc__.split("\n\n")[0].split()),
                                 "Speedups: dense p50 / pruned p50 in one interleaved run of `hobs_jax.bench` (one "
                                 "thread per framework, CPU time per call). Narrative: `aligned_allocation.md`."])
    t.extend(rows)
    titles = {"xla": "XLA", "onnxruntime": "ONNX Runtime"}
    for r in t.rows:  # a latency budget: the asked speedup at the batch its table was measured for
        if r.get("latency_target") is None or r.get("table_batch") is None:
            continue
        asked, got = 1 / r["latency_target"], r.get(f"{r['runtime']}@{r['table_batch']}")
        t.goal(f"{r['label']}: {asked:.2f}x asked in {titles.get(r['runtime'], r['runtime'])} at batch "
               f"{r['table_batch']}, measured within 10%", None if got is None else abs(got / asked - 1) <= 0.1,
               "" if got is None else f"{got:.2f}x ({100 * (got / asked - 1):+.1f}%)")
    t.add_sources(sources)
    return t
