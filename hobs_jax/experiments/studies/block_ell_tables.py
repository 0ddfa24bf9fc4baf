"""The Block-ELL benchmarks' tables (:mod:`~hobs_jax.experiments.studies.block_ell` and
:mod:`~hobs_jax.experiments.studies.block_ell_e2e`) through
:class:`~hobs_jax.experiments.table.ResultTable`, built from their run records
``docs/results/records/block_ell.json`` and ``records/block_ell_e2e.json`` (lists of
measurements merged across devices) without measuring anything.

A table never mixes devices, so the records split by device (``SLUG`` = ``cpu``, or the
GPU's model such as ``h100``):

* ``block_ell``: the issue's goal configuration on the GPU (4096^3, bfloat16, b = 64),
  speedup per backend and sparsity, with the two goals decided from the rows;
* ``block_ell_SLUG``: every SpMM measurement on that device;
* ``block_ell_SLUG_square``: 4096^3 speedups per block size and sparsity (best backend);
* ``block_ell_SLUG_breakeven``: break-even sparsity per block size and shape family;
* ``block_ell_e2e_SLUG``: the channel-pruned ResNet-50 end to end.
"""

from __future__ import annotations

import re
import statistics

import numpy as np

from hobs_jax.experiments.table import Column, ResultTable

GPU_BACKENDS = ("pallas_mosaic", "pallas_triton", "triton", "xla_scatter")
GOAL_SPARSITIES = (0.5, 0.6, 0.75, 0.9, 0.95)
GPU_NOTE = "not yet measured (no GPU lent)"
TIMING = ("Speedup = dense ms / sparse ms from one process. Timing: on a GPU, device time from a profiler trace "
          "(first kernel start to last kernel end of each call, median of 16 calls rotating over 3 copies of X; "
          "`kernels/devtime.py`); on the CPU, wall time of alternating runs (ratios, not absolute times, are what "
          "the shared CPU measures reliably). GPU kernels get the pattern's forward index precomputed "
          "(`--index static`, what the model layers do) unless a row says `in-graph index`.")


def slug(device: str) -> str:
    """``cpu``, or the GPU model in lower case (``NVIDIA H100 80GB HBM3`` -> ``h100``)."""
    if device == "cpu":
        return "cpu"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", device)
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")


def break_even(points: list[tuple[float, float]]) -> tuple[float | None, bool]:
    """(lowest sparsity with speedup >= 1, linearly interpolated; None if never,
    True when already the lowest swept sparsity reaches 1x, i.e. a bound)."""
    points = sorted(points)
    for i, (s, sp) in enumerate(points):
        if sp >= 1.0:
            if i == 0:
                return s, True
            s0, sp0 = points[i - 1]
            return s0 + (1.0 - sp0) * (s - s0) / (sp - sp0), False
    return None, False


def fmt_break_even(be: tuple[float | None, bool]) -> str:
    value, bound = be
    if value is None:
        return "never (<1x in the sweep)"
    return f"<= {100 * value:.0f}%" if bound else f"{100 * value:.0f}%"


def label(r: dict) -> str:
    """Backend name, marked when the GPU kernel re-derived its index in the call."""
    gpu_kernel = r["backend"] in ("pallas_mosaic", "pallas_triton", "triton")
    return r["backend"] + (", in-graph index" if gpu_kernel and r.get("index", "in-graph") == "in-graph" else "")


def _source(rs: list[dict], name: str) -> dict:
    cmds = sorted({r.get("command", "?") for r in rs})
    return {name: {"command": "; ".join(cmds), "host_cpu": ", ".join(sorted({r.get("cpu_model", "?") for r in rs})),
                   "jax": ", ".join(sorted({r.get("jax_version", "?") for r in rs}))}}


def _summary(vals, with_range: bool) -> str:
    vals = [v for v in vals if v != "n/a"]
    if not vals:
        return "-"
    num = [1.0 if v[0] is None else v[0] for v in vals]
    never = sum(v[0] is None for v in vals)
    bound = sum(v[1] for v in vals)
    txt = f"{100 * statistics.median(num):.0f}%"
    if with_range:
        txt += f" ({100 * min(num):.0f}-{100 * max(num):.0f}%)"
    if bound:
        txt += f", {bound}/{len(vals)} already >= 1x at the lowest sparsity"
    if never:
        txt += f", {never}/{len(vals)} never >= 1x (counted as 100%)"
    return txt


def _goal_table(records: list[dict], gpu: str | None, name: str) -> ResultTable:
    cols = [Column("backend_index", "backend")] + [Column(f"s{round(100 * s)}", f"{100 * s:.0f}%")
                                                   for s in GOAL_SPARSITIES]
    t = ResultTable(name, "Block-ELL SpMM vs dense `jnp.dot`: the GPU goal configuration", cols, context=("device",),
                    iso_tolerance=None, description=[
                        "Goal configuration (4096^3, bfloat16, b = 64), speedup over dense per GPU backend (sparse "
                        "ms in brackets). " + TIMING,
                        "Goals (from the issue): H100, bfloat16, b = 64, 90% block sparsity: >= 4x over dense; "
                        "break-even sparsity at b = 64 <= 60%. CPU notes: the XLA forms (`xla_scatter`, "
                        "`xla_gather`) are the only CPU speed paths; for bf16 they compute in float32 on CPU "
                        "(faster there, same result), while the dense baseline is `jnp.dot` in bf16, itself slower "
                        "than fp32 on XLA:CPU."])
    rows = [r for r in records if r["device"] == gpu and r["dtype"] == "bfloat16" and r["block"] == 64
            and r["label"] == "square4096"]
    for be in GPU_BACKENDS:
        for index in ("static", "in-graph"):
            hits = {s: [r for r in rows if r["backend"] == be and r.get("index", "in-graph") == index
                        and abs(r["sparsity"] - s) < 1e-9] for s in GOAL_SPARSITIES}
            if not any(hits.values()):
                continue
            t.add({"device": gpu, "source": name, "backend": be, "index": index,
                   "backend_index": be if be == "xla_scatter" else f"{be}, {index} index",
                   **{f"s{round(100 * s)}": f"{h[0]['speedup']:.2f}x ({h[0]['sparse_ms']:.3f} ms)" if h
                      else "not measured" for s, h in hits.items()}})
    best: dict[float, float] = {}
    for r in rows:
        if r.get("index", "in-graph") == "static" or r["backend"] == "xla_scatter":
            best[r["sparsity"]] = max(best.get(r["sparsity"], 0.0), r["speedup"])
    at90 = best.get(0.9)
    t.goal("H100, bfloat16, b = 64, 90% block sparsity: >= 4x over dense", None if at90 is None else at90 >= 4.0,
           "" if at90 is None else f"{at90:.2f}x, best backend with the precomputed index")
    be = break_even(list(best.items())) if best else None
    t.goal("break-even sparsity at b = 64 <= 60% (4096^3, bfloat16)",
           None if be is None else (be[0] is not None and be[0] <= 0.6), "" if be is None else fmt_break_even(be))
    if gpu is None:
        t.note(f"GPU rows: {GPU_NOTE}.")
    t.note("Per device: `block_ell_SLUG.md` (every measurement), `block_ell_SLUG_square.md` (4096^3), "
           "`block_ell_SLUG_breakeven.md` (break-even sparsities), `block_ell_e2e_SLUG.md` (ResNet-50 end to end); "
           "SLUG: " + ", ".join(f"`{slug(d)}` ({d})" for d in sorted({r['device'] for r in records})) + ".")
    if gpu is not None:
        t.add_sources(_source([r for r in records if r["device"] == gpu], name))
    return t


def _device_tables(records: list[dict], dev: str) -> list[ResultTable]:
    s = slug(dev)
    rs = [r for r in records if r["device"] == dev]
    src = _source(rs, f"block_ell@{s}")
    key = next(iter(src))
    title = f"Block-ELL SpMM vs dense `jnp.dot` on {dev}"
    every = ResultTable(f"block_ell_{s}", title + ": every measurement", [
        Column("dtype", "dtype"), Column("label", "shape"), Column("m_", "M"), Column("k_", "K"), Column("n_", "N"),
        Column("block", "block", "int"), Column("sparsity", "sparsity", "share", 1),
        Column("achieved", "achieved", "share", 2), Column("backend_label", "backend"),
        Column("dense_ms", "dense ms", "float", 3), Column("sparse_ms", "sparse ms", "float", 3),
        Column("speedup", "speedup", "speedup"), Column("timing", "timing")], context=("device",),
        iso_tolerance=None, description=[TIMING, "sparsity = target; achieved = 1 - kept/C blocks per block-row "
                                         "(rounded to whole blocks)."])
    for r in rs:
        every.add(dict(r, source=key, m_=str(r["m"]), k_=str(r["k"]), n_=str(r["n"]), backend_label=label(r),
                       achieved=r.get("achieved_sparsity", r["sparsity"]), timing=r.get("timing", "wall")))
    every.add_sources(src)

    sq = [r for r in rs if r["label"] == "square4096"]
    sps = sorted({r["sparsity"] for r in sq})
    square = ResultTable(f"block_ell_{s}_square", title + ": 4096 x 4096 x 4096",
                         [Column("block", "block", "int")] + [Column(f"s{round(100 * x)}", f"{100 * x:.0f}%")
                                                              for x in sps],
                         context=("device",), group_by=("dtype",), iso_tolerance=None, description=[
                             "Speedup over dense (best backend in brackets). " + TIMING])
    for dtype in ("float32", "bfloat16"):
        d = [r for r in sq if r["dtype"] == dtype]
        for b in sorted({r["block"] for r in d}):
            cells = {}
            for x in sorted({r["sparsity"] for r in d}):
                pts = [r for r in d if r["block"] == b and r["sparsity"] == x]
                if pts:
                    top = max(pts, key=lambda r: r["speedup"])
                    cells[f"s{round(100 * x)}"] = f"{top['speedup']:.2f}x ({label(top)})"
            square.add({"device": dev, "dtype": dtype, "block": b, "source": key, **cells})
        if d:
            square.note(f"{dtype}: backends measured: {', '.join(sorted({r['backend'] for r in d}))}")
    square.add_sources(src)

    be_t = ResultTable(f"block_ell_{s}_breakeven", title + ": break-even sparsity", [
        Column("block", "block", "int"), Column("square", "4096^3"),
        Column("resnet", "ResNet-50 1x1 shapes (median, min-max)"), Column("vit", "ViT-B MLP shapes (median)")],
        context=("device",), group_by=("dtype",), iso_tolerance=None, description=[
            "Lowest sparsity with speedup >= 1, linear interpolation between swept sparsities; best backend per "
            "point. " + TIMING])
    for dtype in ("float32", "bfloat16"):
        d = [r for r in rs if r["dtype"] == dtype]
        for b in sorted({r["block"] for r in d}):
            def be_for(lab, d=d, b=b):
                pts: dict[float, float] = {}
                for r in d:
                    if r["label"] == lab and r["block"] == b:
                        pts[r["sparsity"]] = max(pts.get(r["sparsity"], 0), r["speedup"])
                return break_even(list(pts.items())) if pts else "n/a"
            sq_be = be_for("square4096")
            res = [be_for(lb) for lb in sorted({r["label"] for r in d if r["label"].startswith("resnet50")})]
            vit = [be_for(lb) for lb in sorted({r["label"] for r in d if r["label"].startswith("vit_b")})]
            be_t.add({"device": dev, "dtype": dtype, "block": b, "source": key,
                      "square": "-" if sq_be == "n/a" else fmt_break_even(sq_be),
                      "resnet": _summary(res, True), "vit": _summary(vit, False)})
    be_t.add_sources(src)
    return [every, square, be_t]


def _e2e_table(records: list[dict], dev: str, blocks=(32, 64), sparsities=(0.75, 0.9)) -> ResultTable:
    s = slug(dev)
    rs = [r for r in records if r["device"] == dev]
    src = _source(rs, f"block_ell_e2e@{s}")
    key = next(iter(src))
    cols = [Column("input", "input"), Column("batch", "batch", "int"),
            Column("dense_ms", "dense ms", "float", 0 if dev == "cpu" else 3)]
    cols += [Column(f"b{b}_s{round(100 * x)}", f"b={b}, {100 * x:.0f}%") for b in blocks for x in sparsities]
    if dev != "cpu":
        cols.insert(0, Column("runtime", "dtype, backend"))
    t = ResultTable(f"block_ell_e2e_{s}", f"End to end: channel-pruned ResNet-50 with Block-ELL 1x1 convs on {dev}",
                    cols, context=("device",), iso_tolerance=None, description=[
                        "Model: ResNet-50, eval mode, float32 on the CPU (GPU rows name their dtype). Dense = the "
                        "channel-pruned model; sparse = the same model with every bottleneck 1x1 conv (conv1, conv3, "
                        "strided downsample) in balanced Block-ELL (magnitude, block b, block sparsity s; 3x3 convs, "
                        "stem and fc dense). Speedup = dense ms / sparse ms, medians of round-robin runs in one "
                        "process; cells: speedup over dense (sparse ms in brackets)."])
    by = {(r["dtype"], r["image_size"], r["batch"], r["block"], r["sparsity"]): r for r in rs}
    for dtype, size, batch in sorted({k[:3] for k in by}):
        row_rs = [r for k, r in by.items() if k[:3] == (dtype, size, batch)]
        cells = {}
        for b in blocks:
            for x in sparsities:
                r = by.get((dtype, size, batch, b, x))
                if r is None:
                    continue
                if dev == "cpu":
                    cells[f"b{b}_s{round(100 * x)}"] = f"{r['speedup']:.2f}x ({r['sparse_ms']:.0f} ms)"
                else:
                    busy = (f"; kernels alone {r['busy_speedup']:.2f}x ({r['dense_busy_ms']:.2f} -> "
                            f"{r['sparse_busy_ms']:.2f} ms)") if "busy_speedup" in r else ""
                    cells[f"b{b}_s{round(100 * x)}"] = f"{r['speedup']:.2f}x ({r['sparse_ms']:.3f} ms){busy}"
        t.add({"device": dev, "source": key, "dtype": dtype, "input": f"{size}x{size}", "batch": batch,
               "runtime": f"{dtype}, `{row_rs[0]['backend']}`",
               "dense_ms": float(np.median([r["dense_ms"] for r in row_rs])), **cells})
    r0 = next((r for r in reversed(rs) if "bell_macs_fraction" in r), rs[-1])
    t.note(f"channel pruning: {r0['pruning']} (widths {{{r0['widths']}}}): {100 * r0['macs_ratio']:.1f}% of "
           f"ResNet-50's MACs; {r0['layers']} Block-ELL layers.")
    if "bell_macs_fraction" in r0:
        f = r0["bell_macs_fraction"]
        t.note(f"the Block-ELL layers hold {100 * f:.1f}% of the pruned model's MACs, so a perfect kernel would give "
               "at most " + ", ".join(f"{1 / (1 - f * x):.2f}x at {100 * x:.0f}%" for x in sparsities) + " (Amdahl).")
    if dev == "cpu":
        t.note(f"device `cpu` ({r0['cpu_model']}, shared), jax {r0['jax_version']}, backend `{r0['backend']}` "
               "(`auto`, no autotune cache).")
        for command in sorted({r["command"] for r in rs}):
            rows = [r for r in rs if r["command"] == command]
            sizes = sorted({(r["image_size"], r["batch"]) for r in rows})
            secs = {r["batch"]: r.get("batch_seconds") for r in rows}
            load = {r["batch"]: r.get("load_avg_1m") for r in rows}
            wall = ", ".join(f"batch {b}: {secs[b]:.0f} s" + (f" at load {load[b]:.1f}" if load.get(b) is not None
                                                               else "") for _, b in sizes if secs.get(b) is not None)
            t.note(f"`{command}` measured " + ", ".join(f"{sz}x{sz} batch {b}" for sz, b in sizes)
                   + (f" (wall time incl. compiling the {1 + len(blocks) * len(sparsities)} models: {wall})"
                      if wall else ""))
        t.note("CPU times are of a shared 2-core machine (ratios are the figure to read). The conv1 of each stage's "
               "first block runs at the previous stage's resolution.")
    else:
        t.note("Device time per forward from a profiler trace (first kernel start to last kernel end, median of 16 "
               "calls rotating over 3 inputs) and, where recorded, the sum of kernel times alone ('kernels alone'). "
               "At batch 1 and 32 the forward's ~430 kernels are launched one by one and the span is mostly launch "
               "gaps (dense: 11.6 ms span for 1.3 ms of kernels), so the span ratio understates what the Block-ELL "
               "layers save; a CUDA-graph or fused runtime would see the kernel ratio.")
    t.add_sources(src)
    return t


def tables(records: list[dict], e2e: list[dict] | None = None) -> list[ResultTable]:
    """Every table of the two records (module doc)."""
    devices = sorted({r["device"] for r in records})
    gpus = [d for d in devices if d != "cpu"]
    out = [_goal_table(records, gpus[0] if gpus else None, "block_ell")]
    out += [_goal_table(records, g, f"block_ell_{slug(g)}_goal") for g in gpus[1:]]
    for dev in devices:
        out += _device_tables(records, dev)
    for dev in sorted({r["device"] for r in e2e or []}):
        out.append(_e2e_table(e2e or [], dev))
    return out


def render(out_dir: str = "docs/results") -> list[str]:
    """Write every table from the two run records under ``OUT/records/``; returns the paths."""
    import json
    import os

    from hobs_jax.experiments import studies

    with open(studies.record_path("block_ell", out_dir)) as f:
        records = json.load(f)
    e2e_path = studies.record_path("block_ell_e2e", out_dir)
    e2e = json.load(open(e2e_path)) if os.path.exists(e2e_path) else []
    return [p for t in tables(records, e2e) for p in t.write(os.path.join(out_dir, t.name))]
