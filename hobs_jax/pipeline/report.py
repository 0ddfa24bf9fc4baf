"""``summary.json`` and ``report.md`` in the workdir, from the stage records."""

from __future__ import annotations

import jax

from hobs_jax.pipeline.config import model_label
from hobs_jax.pipeline.context import Context


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def summarize(ctx: Context) -> dict:
    """The run's summary (keys documented in the README)."""
    c = ctx.config
    ev = ctx.results.get("evaluate")
    bench = ctx.results.get("benchmark")
    seconds = {}
    for stage in ctx.results:
        rec = ctx.workdir.done(stage)
        if rec:
            seconds[stage] = round(rec["seconds"], 2)
    prune = ctx.results.get("prune", {})
    return {
        "model": model_label(c),
        "method": c.prune.method if "prune" in ctx.results else None,
        "target": c.prune.target if "prune" in ctx.results else None,
        "metric": c.prune.metric if "prune" in ctx.results else None,
        "acc_dense": _get(ev, "dense", "top1"),
        "acc_pruned": _get(ev, "pruned", "top1"),
        "top5_dense": _get(ev, "dense", "top5"),
        "top5_pruned": _get(ev, "pruned", "top5"),
        "acc_oneshot": prune.get("acc_oneshot"),
        "acc_bn_recalibrated": prune.get("acc_bn_recalibrated"),
        "quantum": prune.get("quantum"),
        "quantum_runtimes": prune.get("quantum_runtimes"),
        "latency_ratio": prune.get("latency_ratio"),
        "latency_feedback": prune.get("latency_feedback"),
        "macs_dense": _get(ev, "dense", "macs"),
        "macs_pruned": _get(ev, "pruned", "macs"),
        "params_dense": _get(ev, "dense", "params"),
        "params_pruned": _get(ev, "pruned", "params"),
        "macs_ratio": _get(ev, "macs_ratio"),
        "params_ratio": _get(ev, "params_ratio"),
        "latency_speedup": _get(bench, "speedup"),
        "latency": _get(bench, "rows"),
        "latency_runtimes": _get(bench, "runtimes"),
        "latency_device": _get(bench, "device"),
        "latency_rounds": _get(bench, "rounds"),
        "latency_clock": _get(bench, "clock"),
        "latency_not_faster": _get(bench, "not_faster"),
        "latency_not_timed": _get(bench, "not_timed"),
        "device": jax.devices()[0].device_kind,
        "stage_seconds": seconds,
        "ast": ast_records(ctx),
    }


def ast_records(ctx: Context) -> dict | None:
    """{stage: AST record} for the training stages that ran with ``<stage>.ast.enabled``
    (gains, target and achieved rate, threshold range, converged, samples, seconds; see
    docs/ast.md), or None."""
    out = {stage: ctx.results[stage]["ast"] for stage in ("train", "finetune")
           if isinstance(ctx.results.get(stage), dict) and ctx.results[stage].get("ast")}
    return out or None


def _fmt(v, pct=False):
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def latency_lines(s: dict) -> list[str]:
    """The report's latency part: p50/p95 of dense and pruned per runtime and batch, and in
    bold every runtime where the pruned network is not faster, with the pruned widths off
    that runtime's width quantum."""
    from hobs_jax.bench.report import TITLES

    rows = s["latency"]
    rounds = s.get("latency_rounds")
    where = s.get("latency_device") or s["device"]
    cpu_clock = s.get("latency_clock") == "cpu"
    lines = ["", f"Latency on {where}: ms per call" + (" (CPU time, one thread)" if cpu_clock else "")
             + ", dense and pruned timed interleaved"
             + (f" over {rounds} rounds" if rounds else "") + "; speedup = dense p50 / pruned p50 "
             "(benchmark/summary.md has every statistic, benchmark/results.csv every row).", "",
             "| runtime | batch | dense p50 | dense p95 | pruned p50 | pruned p95 | speedup |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = TITLES.get(r.get("runtime"), r.get("runtime") or "XLA")
        extra = "" if r.get("dtype", "float32") == "float32" else f" {r['dtype']}"
        extra += f" ({r['device']})" if r.get("device") == "gpu" else ""
        cells = [f"{r[k]:.3f}" if r.get(k) is not None else "-"
                 for k in ("dense_ms", "dense_p95_ms", "pruned_ms", "pruned_p95_ms")]
        lines.append(f"| {name}{extra} | {r['batch']} | " + " | ".join(cells) + f" | {r['speedup']:.2f}x |")
    for nf in s.get("latency_not_faster") or []:
        name = TITLES.get(nf["runtime"], nf["runtime"])
        at = ", ".join(f"batch {b} ({x:.2f}x)" for b, x in zip(nf["batches"], nf["speedups"]))
        if nf["unaligned"]:
            why = (f"Pruned widths that are not multiples of {name}'s width quantum {nf['quantum']} "
                   f"({nf['quantum_source']}): " + ", ".join(f"{k} {v}" for k, v in nf["unaligned"].items()) + ".")
        else:
            why = (f"Every pruned width is a multiple of {name}'s width quantum {nf['quantum']} "
                   f"({nf['quantum_source']}): the widths do not explain it.")
        lines += ["", f"**The pruned network is not faster than dense in {name} ({nf['device']}, {nf['dtype']}) "
                      f"at {at}. {why}**"]
    missing: dict[tuple, list] = {}
    for nt in s.get("latency_not_timed") or []:
        missing.setdefault((nt["model"], nt["runtime"], nt["reason"]), []).append(str(nt["batch"]))
    for (model, runtime, reason), batches in missing.items():
        lines += ["", f"Not timed: {model} in {TITLES.get(runtime, runtime)} at batch "
                      f"{','.join(batches)}: {reason}"]
    return lines


def render(s: dict) -> str:
    lines = [f"# {s['model']}: " + (f"{s['method']} to {s['target']} of the {s['metric']}"
                                     if s["method"] else "dense"), ""]
    lines += ["| | dense | pruned |", "|---|---:|---:|",
              f"| top-1 | {_fmt(s['acc_dense'], True)} | {_fmt(s['acc_pruned'], True)} |"]
    if s["top5_dense"] is not None:
        lines.append(f"| top-5 | {_fmt(s['top5_dense'], True)} | {_fmt(s['top5_pruned'], True)} |")
    lines += [f"| MACs / example | {_fmt(s['macs_dense'])} | {_fmt(s['macs_pruned'])} |",
              f"| params | {_fmt(s['params_dense'])} | {_fmt(s['params_pruned'])} |", ""]
    if s["macs_ratio"] is not None:
        lines.append(f"MACs ratio {s['macs_ratio']:.4f} ({1 / s['macs_ratio']:.2f}x fewer), params "
                     f"ratio {s['params_ratio']:.4f}. Top-1 right after pruning (no fine-tuning): "
                     f"{_fmt(s['acc_oneshot'], True)}; after BN re-estimation: "
                     f"{_fmt(s['acc_bn_recalibrated'], True)}.")
    if (s.get("quantum") or 1) > 1:
        rt = ", ".join(s.get("quantum_runtimes") or [])
        lines.append(f"Pruned widths are multiples of {s['quantum']} channels (the width quantum for {rt}).")
    if s.get("latency_ratio") is not None:
        lines.append(f"Predicted by the latency table: {s['latency_ratio']:.4f} of the dense time.")
    fb = s.get("latency_feedback")
    if fb:
        steps = "; ".join(f"asked {r['asked']:.3f} -> " + (f"measured {r['measured']:.3f}" if r["measured"] is not None
                                                           else "unreachable") for r in fb["rounds"])
        verdict = "within" if fb["met"] else "**not within**"
        lines.append(f"Latency target {fb['target']:g} of the dense time closed by measurement ({steps}): kept the "
                     f"network measured at {fb['measured']:.3f}, {verdict} {fb['tol']:.0%} of the target.")
    if s["latency"]:
        lines += latency_lines(s)
    for stage, a in (s.get("ast") or {}).items():
        lines += ["", f"AST in {stage}: rule {a['rule']}, target rate {a['target_rate']:g}, "
                      f"achieved {_fmt(a['achieved_rate'])}, {a['samples_backpropagated']:,} of "
                      f"{a['samples_seen']:,} samples back-propagated, controller converged: "
                      f"{a['converged']}."]
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                        s["stage_seconds"].items()), ""]
    return "\n".join(lines)


def write_report(ctx: Context) -> dict:
    s = summarize(ctx)
    if jax.process_index() == 0:
        ctx.workdir.write_json("summary.json", s)
        with open(f"{ctx.workdir.root}/report.md", "w") as f:
            f.write(render(s))
        print(render(s))
    return s
