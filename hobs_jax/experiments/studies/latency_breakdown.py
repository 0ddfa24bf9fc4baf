"""Where a pruned network's time goes (issue 18, goal 1): the per-layer latency tables of
the dense network (:func:`hobs_jax.methods.latency_table.cached_table`, one thread, CPU
time, measured once per runtime and batch and cached) evaluated at the dense widths and at
the kept widths of allocations recorded by the aligned-allocation study
(:mod:`hobs_jax.experiments.studies.aligned_allocation`), layer by layer and summed per
part of the network (stem, each stage, classifier), in XLA and ONNX Runtime at each batch.

    python benchmarks/latency_breakdown.py --config configs/quickstart.py \\
        --record docs/results/records/quickstart_speed.json --labels hobs_q8,rank_xla \\
        --out docs/results/quickstart_breakdown

A part whose pruned time barely falls while its MACs halve is where the speedup is lost.
The tables time each layer alone (convolution, with the element-wise rest shared over the
layers by output size when the table measured one), so the sums are predictions, checked
against the measured speedups in the study's narrative.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from hobs_jax.experiments import studies

NAME = "quickstart_breakdown"


def part_of(path: str) -> str:
    """The part of a ResNet a table layer belongs to: 'stem', 'layerN' or 'classifier'."""
    head = path.split("/")[0]
    if head.startswith("layer"):
        return head
    return "classifier" if head in ("fc", "head", "linear", "classifier") else "stem"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/quickstart.py")
    p.add_argument("--record", default="", help="an aligned-allocation run record (rows with 'keep')")
    p.add_argument("--labels", default="", help="comma-separated rows of the record (default: all)")
    p.add_argument("--runtimes", default="xla,onnxruntime")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--points", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    folder, name = os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out)
    if args.render_only:
        for path in studies.render(sys.modules[__name__], folder, name):
            print(path)
        return
    if not args.record:
        p.error("--record is required to measure")
    import numpy as np

    from hobs_jax import export
    from hobs_jax.allocation.latency import LatencyBudget
    from hobs_jax.experiments import machine
    from hobs_jax.experiments.validate import load_config_file
    from hobs_jax.methods import make_task
    from hobs_jax.methods.latency_table import cached_table
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.workdir import Workdir

    with open(args.record) as f:
        record = json.load(f)
    wanted = [x for x in args.labels.split(",") if x]
    rows = [r for r in record["rows"] if "keep" in r and (not wanted or r["label"] in wanted)]
    missing = sorted(set(wanted) - {r["label"] for r in rows})
    if missing:
        raise ValueError(f"--labels: {missing} are not rows with kept widths in {args.record}")
    c = load_config_file(args.config).get_config()
    ctx = Context(c, Workdir(os.path.join(folder, ".breakdown_workdir"), create=False))  # reads, never writes
    shape = ctx.input_shape
    prunable = ctx.prunable(export.load(c.init.path)[1])
    task = make_task("magnitude", prunable, target=0.5, input_shape=shape)
    out = []
    tables = {}
    for rt in args.runtimes.split(","):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            t = cached_table(prunable, input_shape=shape, runtime=rt, batch=b, threads=1, clock="cpu", quantum=8,
                             points=args.points)
            tables[f"{rt}@{b}"] = {k: t.get(k) for k in ("dense_seconds", "rest_seconds", "rest_source",
                                                         "seconds_to_build", "device")}
            budget = LatencyBudget.for_task(t, task)
            dense = budget.layer_seconds(budget.sizes)
            for r in rows:
                keep = np.array([r["keep"][str(g)] for g in task.cost.group_ids], np.float64)
                pruned = budget.layer_seconds(keep)
                for part in dict.fromkeys(part_of(x) for x in budget.paths):
                    idx = [i for i, x in enumerate(budget.paths) if part_of(x) == part]
                    d, q = float(dense[idx].sum()), float(pruned[idx].sum())
                    out.append(dict(label=r["label"], runtime=rt, batch=b, part=part, layers=len(idx),
                                    dense_ms=1e3 * d, pruned_ms=1e3 * q, speedup=d / q if q > 0 else None,
                                    dense_share=d / float(dense.sum()), pruned_share=q / float(pruned.sum())))
                out.append(dict(label=r["label"], runtime=rt, batch=b, part="all (predicted)",
                                layers=len(budget.paths), dense_ms=1e3 * float(dense.sum()),
                                pruned_ms=1e3 * float(pruned.sum()), speedup=float(dense.sum() / pruned.sum()),
                                dense_share=1.0, pruned_share=1.0,
                                measured=(r.get("speedup") or {}).get(f"{rt}@{b}")))
                per_layer = {x: [1e3 * float(a), 1e3 * float(q)] for x, a, q in zip(budget.paths, dense, pruned)}
                out[-1]["per_layer_ms"] = per_layer
    doc = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "record": args.record,
           "device": machine.record(), "tables": tables, "rows": out,
           "keep": {r["label"]: r["keep"] for r in rows}}
    studies.save_record(name, json.loads(json.dumps(doc, default=str)), folder)
    for path in studies.render(sys.modules[__name__], folder, name):
        print(path)


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """Rows of the run record :func:`main` writes: one per (allocation, runtime, batch,
    part of the network)."""
    from hobs_jax.experiments import machine

    m = doc["device"]
    key = f"latency_breakdown@{m['date'][:16]}"
    rows = [{k: v for k, v in r.items() if k != "per_layer_ms"}
            | {"device": machine.device_key(m), "source": key, "dataset": "fashion_mnist", "split": "none (timing)"}
            for r in doc["rows"]]
    return rows, {key: {"command": doc["command"], "date": m["date"], "machine": machine.describe(m),
                        "record": doc["record"]}}


def table(rows, sources, name: str = NAME):
    """Per allocation, runtime and batch: each part's predicted time dense and pruned, its
    speedup and share of the time, and the whole network's predicted and measured speedup."""
    from hobs_jax.experiments.table import Column, ResultTable

    t = ResultTable(name, "Where the pruned network's time goes: " + name,
                    [Column("label", "allocation"), Column("runtime", "runtime"), Column("batch", "batch", "int"),
                     Column("part", "part"), Column("layers", "layers", "int"),
                     Column("dense_ms", "dense ms", "ms"), Column("pruned_ms", "pruned ms", "ms"),
                     Column("speedup", "speedup", "speedup"), Column("dense_share", "share dense", "share", 1),
                     Column("pruned_share", "share pruned", "share", 1),
                     Column("measured", "measured (network)", "speedup")],
                    description=[" ".join(__doc__.split("\n\n")[0].split()),
                                 "Times: the latency tables' predictions (one thread, CPU time per call); "
                                 "`measured`: the study's interleaved benchmark of the whole network."])
    t.extend(rows)
    t.add_sources(sources)
    return t
