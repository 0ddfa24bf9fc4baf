"""A suite run's files: ``results.csv`` and ``results.json`` (rows plus the machine and
software record), ``summary.md`` (per-model tables, JAX-vs-PyTorch ratios, speedups over a
baseline model, what was skipped and why) and the plots.

Every ratio here is of p50 latencies of configurations timed in the same interleaved run;
``a / b > 1`` means ``b`` is faster.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from typing import Any

from hobs_jax.bench import sysinfo

# Runtimes compared with XLA in the JAX-vs-PyTorch table, in column order.
PEERS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
TITLES = {"xla": "XLA", "onnxruntime": "ONNX Runtime", "torch": "torch eager",
          "torch-compile": "torch.compile", "tensorrt": "TensorRT"}


def index(rows: Iterable[dict]) -> dict[tuple, dict]:
    """``(model, runtime, device, dtype, batch) -> row`` of the rows that were timed."""
    return {(r["model"], r["runtime"], r["device"], r["dtype"], r["batch"]): r
            for r in rows if r["status"] == "ok"}


def speedups(rows: Iterable[dict], baseline: str, model: str) -> list[dict]:
    """``baseline`` p50 / ``model`` p50 for every (runtime, device, dtype, batch) where both
    were timed (> 1: ``model`` is faster), with both p50s and p95s."""
    idx = index(rows)
    out = []
    for (m, runtime, device, dtype, batch), r in idx.items():
        if m != model:
            continue
        base = idx.get((baseline, runtime, device, dtype, batch))
        if base is None:
            continue
        out.append({"runtime": runtime, "device": device, "dtype": dtype, "batch": batch,
                    "baseline_p50_ms": base["p50_ms"], "p50_ms": r["p50_ms"],
                    "baseline_p95_ms": base["p95_ms"], "p95_ms": r["p95_ms"],
                    "speedup": base["p50_ms"] / r["p50_ms"]})
    return out


def _fmt(v, digits=3) -> str:
    """``digits`` significant digits; thousands separators from 10**digits on."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"
    return str(v)


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def write_csv(rows: list[dict], path: str) -> None:
    from hobs_jax.bench.suite import COLUMNS

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def read_csv(path: str) -> list[dict]:
    """Rows of a results.csv with numbers parsed back (empty cells are None)."""
    ints = {"batch", "samples", "threads"}
    text = {"model", "runtime", "framework", "device", "dtype", "status", "reason", "note", "clock", "cpu", "isa",
            "gpu", "date", "commit", "versions"}
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                elif k in text:
                    row[k] = v
                elif k in ints:
                    row[k] = int(v)
                else:
                    row[k] = float(v)
            out.append(row)
    return out


def summary_markdown(result, baseline: str | None = None) -> str:
    """The run as Markdown (see module docstring)."""
    meta, rows = result.meta, result.rows
    m = meta["machine"]
    v = m["versions"]
    git = m.get("git") or {}
    opts = meta["options"]
    lines = ["# Inference benchmark", "",
             f"Machine: {sysinfo.describe(m)}; load average at the end "
             f"{(meta.get('load_average_end') or ['-'])[0]}. {m['date']}, commit "
             f"{(git.get('commit') or '-')[:10]}{' (dirty)' if git.get('dirty') else ''}.",
             "Software: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
             f"Method: {opts['rounds']} interleaved rounds, {opts['iters']} timed calls per configuration "
             f"after {opts['warmup']} warm-up calls, threads per framework: {opts['threads'] or 'all cores'}; "
             "latency is "
             + ("wall time" if opts.get("clock", "wall") == "wall" else "the worker's CPU time (one thread: the "
                "core time of a call, unaffected by other jobs)")
             + " per call (ms), throughput examples/s at the p50; ratios are of p50s from this one run.", ""]
    idx = index(rows)
    for info in result.models:
        label = info["label"]
        shape = "x".join(map(str, info["input_shape"]))
        lines += [f"## {label}", "",
                  f"Input {shape}, {info['macs'] / 1e6:,.1f} M MACs and {info['params'] / 1e6:,.3f} M "
                  f"parameters per example" + (f" (zoo model {info['zoo']})" if info.get("zoo") else "") + ".", "",
                  "| runtime | device | dtype | batch | p50 ms | p95 ms | p99 ms | std ms | examples/s | "
                  "compile s | peak RSS MB | RSS +MB | runtime MB | rel. error |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["model"] != label or r["status"] != "ok":
                continue
            lines.append(f"| {TITLES.get(r['runtime'], r['runtime'])} | {r['device']} | {r['dtype']} | "
                         f"{r['batch']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | "
                         f"{_ms(r['std_ms'])} | {_fmt(r['throughput_ips'], 4)} | {_fmt(r['compile_s'])} | "
                         f"{_fmt(r['peak_rss_mb'], 4)} | {_fmt(r['rss_delta_mb'], 4)} | "
                         f"{_fmt(r['runtime_mem_mb'], 4)} | {_fmt(r['verify_rel_err'], 2)} |")
        ratio_rows = []
        by_device_dtype_batch = sorted(idx.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][4]))
        for (mm, runtime, device, dtype, batch), r in by_device_dtype_batch:
            if mm != label or runtime != "xla":
                continue
            cells = []
            for peer in PEERS:
                p = idx.get((label, peer, device, dtype, batch))
                cells.append("-" if p is None else f"{p['p50_ms'] / r['p50_ms']:.2f}")
            if any(c != "-" for c in cells):
                ratio_rows.append(f"| {device} | {dtype} | {batch} | {_ms(r['p50_ms'])} | " + " | ".join(cells) + " |")
        if ratio_rows:
            lines += ["", "JAX vs PyTorch (and the other runtimes): p50 of each runtime / p50 of XLA "
                          "(> 1: XLA is faster).", "",
                      "| device | dtype | batch | XLA p50 ms | "
                      + " | ".join(f"{TITLES[p]} / XLA" for p in PEERS) + " |",
                      "|---|---|---:|---:|" + "---:|" * len(PEERS)]
            lines += ratio_rows
        if baseline and label != baseline:
            sp = speedups(rows, baseline, label)
            if sp:
                lines += ["", f"Speedup over {baseline}: its p50 / this model's p50 (> 1: faster).", "",
                          "| runtime | device | dtype | batch | " + f"{baseline} p50 ms | p50 ms | speedup |",
                          "|---|---|---|---:|---:|---:|---:|"]
                for s in sorted(sp, key=lambda s: (s["runtime"], s["device"], s["dtype"], s["batch"])):
                    bold = "**" if s["speedup"] < 1 else ""
                    lines.append(f"| {TITLES.get(s['runtime'], s['runtime'])} | {s['device']} | {s['dtype']} | "
                                 f"{s['batch']} | {_ms(s['baseline_p50_ms'])} | {_ms(s['p50_ms'])} | "
                                 f"{bold}{s['speedup']:.2f}x{bold} |")
        lines.append("")
    skipped: dict[tuple, list] = {}
    for r in rows:
        if r["status"] != "ok":
            skipped.setdefault((r["model"], r["runtime"], r["device"], r["dtype"], r["status"], r["reason"]),
                               []).append(r["batch"])
    if skipped:
        lines += ["## Not timed", ""]
        for (model, runtime, device, dtype, status, reason), batches in skipped.items():
            lines.append(f"- {model}, {TITLES.get(runtime, runtime)} ({device}, {dtype}), batch "
                         f"{','.join(map(str, batches))}: {status}: {reason}")
        lines.append("")
    return "\n".join(lines)


def write(result, out_dir: str, *, plots: bool = True, baseline: str | None = None) -> dict[str, str]:
    """Write the run's files into ``out_dir`` (created); returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "results.csv"), "json": os.path.join(out_dir, "results.json"),
             "summary": os.path.join(out_dir, "summary.md")}
    write_csv(result.rows, paths["csv"])
    with open(paths["json"], "w") as f:
        json.dump(result.to_json(), f, indent=1, default=str)
    with open(paths["summary"], "w") as f:
        f.write(summary_markdown(result, baseline=baseline))
    if plots and result.ok_rows():
        from hobs_jax.bench import plots as plot_mod

        paths.update(plot_mod.plot_all(result.rows, out_dir))
    return paths
