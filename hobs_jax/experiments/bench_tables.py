"""Result tables of :mod:`hobs_jax.bench` runs, built from a run's ``results.json`` (the
suite keeps its raw ``results.csv``/``results.json`` and plots; the tables come from here,
so they can be rebuilt without timing anything).

A suite run folder ``DIR`` gets, through :class:`~hobs_jax.experiments.table.ResultTable`:

* ``DIR/summary``: latency, throughput, compile time, memory and the verification error
  per model (a section each), runtime, dtype and batch;
* ``DIR/summary_ratios``: each runtime's p50 over XLA's (> 1: XLA is faster);
* ``DIR/summary_speedup`` (with a baseline model): the baseline's p50 over each model's,
  a column per runtime and batch;
* ``DIR/summary_models``: the networks (input, MACs, parameters, widths).

A table never mixes devices: a run with CPU and GPU rows gets one set per device
(``summary_cpu``, ``summary_gpu``, ...). :func:`jax_vs_torch` builds the JAX-vs-PyTorch
page from the suite runs of several groups (one section per group and model).

The bench package sits below the experiments package (it may not import it), so
``python -m hobs_jax.bench`` itself still prints its own plain summary; the published
folders under ``docs/results/`` are rendered here (``make reproduce``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from hobs_jax.experiments.table import Column, ResultTable

PEERS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
TITLES = {"xla": "XLA", "onnxruntime": "ONNX Runtime", "torch": "torch eager",
          "torch-compile": "torch.compile", "tensorrt": "TensorRT"}


def _device_key(machine: Mapping, device: str) -> str:
    """``cpu:<model>:<isa>`` for rows timed on the host CPU, ``gpu:<name>`` on a GPU."""
    if device == "cpu":
        c = machine["cpu"]
        return f"cpu:{c['model']}:{c['isa']}"
    gpus = machine.get("gpus") or []
    return f"gpu:{gpus[0]['name']}" if gpus else f"{device}:unrecorded"


def _describe(meta: Mapping) -> list[str]:
    from hobs_jax.bench import sysinfo

    m, opts = meta["machine"], meta["options"]
    git = m.get("git") or {}
    return [f"Machine: {sysinfo.describe(m)}; load average at the end {(meta.get('load_average_end') or ['-'])[0]}. "
            f"{m['date']}, commit {(git.get('commit') or '-')[:10]}{' (dirty)' if git.get('dirty') else ''}.",
            "Software: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
            f"Method: {opts['rounds']} interleaved rounds, {opts['iters']} timed calls per configuration after "
            f"{opts['warmup']} warm-up calls, threads per framework: {opts['threads'] or 'all cores'}; latency is "
            + ("wall time" if opts.get("clock", "wall") == "wall" else "the worker's CPU time (one thread: the core "
               "time of a call, unaffected by other jobs)")
            + " per call (ms), throughput examples/s at the p50; ratios are of p50s from this one run."]


def baseline_of(result: Mapping) -> str | None:
    """The run's baseline model: recorded in its meta, else its ``--baseline`` argument."""
    meta = result["meta"]
    if meta.get("baseline"):
        return meta["baseline"]
    argv = list(meta.get("argv") or [])
    if "--baseline" in argv and argv.index("--baseline") + 1 < len(argv):
        return argv[argv.index("--baseline") + 1]
    return None


def run_tables(result: Mapping, name: str = "summary", baseline: str | None = None) -> list[ResultTable]:
    """The tables of one suite run (module doc); ``baseline`` overrides :func:`baseline_of`."""
    from hobs_jax.bench.report import index

    meta, rows = result["meta"], result["rows"]
    baseline = baseline or baseline_of(result)
    ok = [r for r in rows if r["status"] == "ok"]
    devices = list(dict.fromkeys(r["device"] for r in rows))
    source = {"command": " ".join(meta.get("argv") or []), "seconds": round(meta.get("seconds") or 0, 1)}
    out = []
    for dev in devices:
        suffix = f"_{dev}" if len(devices) > 1 else ""
        ctx = {"device": _device_key(meta["machine"], dev), "runtime_device": dev, "source": "run"}
        lat = ResultTable(f"{name}{suffix}", "Inference benchmark", [
            Column("runtime_title", "runtime"), Column("dtype", "dtype"), Column("batch", "batch", "int"),
            Column("p50_ms", "p50 ms", "ms"), Column("p95_ms", "p95 ms", "ms"), Column("p99_ms", "p99 ms", "ms"),
            Column("std_ms", "std ms", "ms"), Column("throughput_ips", "examples/s", "sig", 4),
            Column("compile_s", "compile s", "sig", 3), Column("peak_rss_mb", "peak RSS MB", "sig", 4),
            Column("rss_delta_mb", "RSS +MB", "sig", 4), Column("runtime_mem_mb", "runtime MB", "sig", 4),
            Column("verify_rel_err", "rel. error", "sig", 2)], context=("device",), group_by=("model",),
            iso_tolerance=None, description=_describe(meta))
        for info in result["models"]:
            for r in ok:
                if r["model"] == info["label"] and r["device"] == dev:
                    lat.add({**r, **ctx, "runtime_title": TITLES.get(r["runtime"], r["runtime"])})
        skipped: dict[tuple, list] = {}
        for r in rows:
            if r["status"] != "ok" and r["device"] == dev:
                skipped.setdefault((r["model"], r["runtime"], r["dtype"], r["status"], r["reason"]), []).append(
                    r["batch"])
        for (model, runtime, dtype, status, reason), batches in skipped.items():
            lat.note(f"not timed: {model}, {TITLES.get(runtime, runtime)} ({dtype}), batch "
                     f"{','.join(map(str, batches))}: {status}: {reason}")
        lat.source("run", **source)
        out.append(lat)

        idx = index(rows)
        ratios = ResultTable(f"{name}_ratios{suffix}", "JAX vs PyTorch (and the other runtimes): p50 of each "
                             "runtime / p50 of XLA (> 1: XLA is faster)",
                             [Column("dtype", "dtype"), Column("batch", "batch", "int"),
                              Column("xla_p50_ms", "XLA p50 ms", "ms")]
                             + [Column(f"over_{p}", f"{TITLES[p]} / XLA", "float", 2) for p in PEERS],
                             context=("device",), group_by=("model",), iso_tolerance=None)
        for info in result["models"]:
            label = info["label"]
            for (mm, runtime, device, dtype, batch), r in sorted(idx.items(), key=lambda kv: (kv[0][2], kv[0][3],
                                                                                               kv[0][4])):
                if mm != label or runtime != "xla" or device != dev:
                    continue
                cells = {f"over_{p}": idx[(label, p, device, dtype, batch)]["p50_ms"] / r["p50_ms"]
                         for p in PEERS if (label, p, device, dtype, batch) in idx}
                if cells:
                    ratios.add({**ctx, "model": label, "dtype": dtype, "batch": batch, "xla_p50_ms": r["p50_ms"],
                                **cells})
        if ratios.rows:
            ratios.source("run", **source)
            out.append(ratios)
        if baseline:
            sp_t = _speedup_pivot(result, baseline, dev, ctx, f"{name}_speedup{suffix}")
            if sp_t.rows:
                sp_t.source("run", **source)
                out.append(sp_t)
    models = _models_table(result, baseline, f"{name}_models")
    models.source("run", **source)
    out.append(models)
    return out


def _models_table(result: Mapping, baseline: str | None, name: str) -> ResultTable:
    """The run's networks: input, MACs and parameters per example (and their share of the
    baseline's), widths."""
    meta = result["meta"]
    base = next((m for m in result["models"] if m["label"] == baseline), None)
    cols = [Column("label", "model"), Column("input", "input"), Column("mmacs", "M MACs / example", "float", 1)]
    if base is not None:
        cols.append(Column("macs_share", f"MACs of {baseline}", "share", 2))
    cols += [Column("mparams", "M parameters", "float", 3), Column("zoo", "zoo model"),
             Column("widths_text", "widths")]
    t = ResultTable(name, "Inference benchmark: the networks", cols, context=("device",), iso_tolerance=None)
    for info in result["models"]:
        t.add({"device": _device_key(meta["machine"], (meta.get("devices") or ["cpu"])[0]), "source": "run",
               "label": info["label"], "input": "x".join(map(str, info["input_shape"])),
               "mmacs": info["macs"] / 1e6, "mparams": info["params"] / 1e6, "zoo": info.get("zoo"),
               "macs_share": info["macs"] / base["macs"] if base else None,
               "widths_text": ", ".join(str(v) for v in (info.get("widths") or {}).values()) or None})
    return t


def _speedup_pivot(result: Mapping, baseline: str, dev: str, ctx: Mapping, name: str) -> ResultTable:
    """``baseline`` p50 / each model's p50 per runtime and batch (one column each), one row
    per model, a section per dtype; the baseline's own p50s in the notes."""
    from hobs_jax.bench.report import index, speedups

    rows = result["rows"]
    sp = {m["label"]: [s for s in speedups(rows, baseline, m["label"]) if s["device"] == dev]
          for m in result["models"] if m["label"] != baseline}
    keys = sorted({(s["runtime"], s["batch"]) for v in sp.values() for s in v},
                  key=lambda k: (k[0] != "xla", k[0], k[1]))
    t = ResultTable(name, f"Speedup over {baseline}: its p50 / each model's p50 (below 1x: slower than {baseline})",
                    [Column("model", "model")] + [Column(f"{rt}@{b}", f"{TITLES.get(rt, rt)} b{b}", "speedup")
                                                  for rt, b in keys],
                    context=("device",), group_by=("dtype",), iso_tolerance=None)
    for dtype in sorted({s["dtype"] for v in sp.values() for s in v}):
        for model, v in sp.items():
            cells = {f"{s['runtime']}@{s['batch']}": s["speedup"] for s in v if s["dtype"] == dtype}
            if cells:
                t.add({**ctx, "model": model, "dtype": dtype, **cells})
        slower = [f"{r['model']} {k.replace('@', ' b')}" for r in t.rows if r["dtype"] == dtype
                  for k in r if "@" in k and r[k] is not None and r[k] < 1]
        if slower:
            t.note(f"slower than {baseline} ({dtype}): " + ", ".join(slower))
        idx = index(rows)
        p50 = [f"{TITLES.get(rt, rt)} {idx[(baseline, rt, dev, dtype, b)]['p50_ms']:.3g} ms (batch {b})"
               for rt, b in keys if (baseline, rt, dev, dtype, b) in idx]
        if p50:
            t.note(f"{baseline} p50 ({dtype}): " + ", ".join(p50))
    return t


def render_run(run_dir: str, baseline: str | None = None, out_dir: str | None = None) -> list[str]:
    """Write the tables of the suite run in ``run_dir`` (its ``results.json``) into
    ``out_dir`` (default: the run's own folder)."""
    with open(os.path.join(run_dir, "results.json")) as f:
        result = json.load(f)
    out_dir = out_dir or run_dir
    return [p for t in run_tables(result, baseline=baseline) for p in t.write(os.path.join(out_dir, t.name))]


def jax_vs_torch(groups: Mapping[str, Mapping], name: str = "jax_vs_torch") -> ResultTable:
    """The JAX-vs-PyTorch page from the suite results of several groups (``group ->
    results.json``): per group and model, each runtime's p50 over XLA's and XLA's own p50;
    each group's source is the command its results record."""
    from hobs_jax.bench.report import index

    t = ResultTable(name, "JAX vs PyTorch: dense inference", [
        Column("dtype", "dtype"), Column("batch", "batch", "int"), Column("xla_p50_ms", "XLA p50 ms", "ms")]
        + [Column(f"over_{p}", f"{TITLES[p]} / XLA", "float", 2) for p in PEERS],
        context=("device",), group_by=("group", "model"), iso_tolerance=None, description=[
            f"p50 of each runtime / p50 of XLA (> 1: XLA is faster), from one interleaved run per group. Per group: "
            f"the full tables (`{name}/<group>/summary*.md`: latency percentiles, throughput, compile time, memory, "
            "the error against Flax), `results.csv`/`.json` and the plots in `" + name + "/<group>/`. Random weights "
            "(latency does not depend on them); every runtime's outputs were verified against Flax before timing."])
    for group, result in groups.items():
        meta = result["meta"]
        idx = index(result["rows"])
        for info in result["models"]:
            label = info["label"]
            for (mm, runtime, device, dtype, batch), r in sorted(idx.items(), key=lambda kv: (kv[0][2], kv[0][3],
                                                                                               kv[0][4])):
                if mm != label or runtime != "xla":
                    continue
                cells = {f"over_{p}": idx[(label, p, device, dtype, batch)]["p50_ms"] / r["p50_ms"]
                         for p in PEERS if (label, p, device, dtype, batch) in idx}
                t.add({"device": _device_key(meta["machine"], device), "group": group, "model": label,
                       "dtype": dtype, "batch": batch, "xla_p50_ms": r["p50_ms"], "source": group, **cells})
        opts = meta["options"]
        t.source(group, command="python " + " ".join(meta.get("argv") or []),
                 batch_sizes=",".join(map(str, opts["batch_sizes"])),
                 timed_calls=opts["iters"], rounds=opts["rounds"], seconds=round(meta.get("seconds") or 0))
    return t


RUNS = "bench_runs"  # the run record: docs/results/records/bench_runs.json


def render_all(out: str = "docs/results", index: Mapping | None = None, results: str | None = None) -> list[str]:
    """Every published suite run's tables (the folders under ``results`` (default ``out``)
    that the index record ``records/bench_runs.json`` lists, with their baselines) and the
    JAX-vs-PyTorch page from the ``jax_vs_torch/<group>`` runs, written under ``out``;
    nothing is timed."""
    results = results or out
    if index is None:
        with open(os.path.join(results, "records", f"{RUNS}.json")) as f:
            index = json.load(f)
    paths, groups = [], {}
    for run, info in index["runs"].items():
        paths += render_run(os.path.join(results, run), baseline=info.get("baseline"),
                            out_dir=os.path.join(out, run))
        if run.startswith("jax_vs_torch/"):
            with open(os.path.join(results, run, "results.json")) as f:
                groups[run.split("/", 1)[1]] = json.load(f)
    if groups:
        paths += write_jax_vs_torch(groups, os.path.join(out, "jax_vs_torch"))
    return paths


def write_jax_vs_torch(groups: Mapping[str, Mapping], prefix: str) -> list[str]:
    """:func:`jax_vs_torch` written as ``PREFIX.{json,md,tex}``."""
    return jax_vs_torch(groups, os.path.basename(prefix)).write(prefix)
