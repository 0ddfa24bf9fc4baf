"""Markdown, JSON and plot for ``benchmarks/oneshot_fmnist.py`` (from its cached rows)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
from typing import Any

from hobs_jax.experiments import machine

GOAL_2X, GOAL_3X = 0.8, 2.0  # points of top-1 lost by H-OBS (with BN re-estimation), ResNet-56
KEYS = ("model", "method", "framework", "target_macs_ratio", "macs_ratio", "params_ratio",
        "acc_dense", "acc_oneshot", "acc_bn_recalibrated", "acc_finetuned", "acc_by_steps",
        "latency_speedup")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _speed(rec) -> str:
    s = rec.get("latency_speedup") or {}
    return " / ".join(f"{s[k]:.2f}x" for k in ("batch1", "batch64") if k in s) or "-"


def _key(t: float) -> str:
    return f"{t:g}"


def table(records: list[dict], steps: list[str]) -> list[str]:
    head = ["row", "framework", "MACs kept", "params kept", "one-shot", "BN re-est."]
    head += [f"+{s} steps" for s in steps] + ["latency speedup (b1 / b64)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best_one = max((r["acc_oneshot"] for r in records), default=None)
    best_bn = max((r["acc_bn_recalibrated"] for r in records), default=None)
    for r in records:
        one = _pct(r["acc_oneshot"])
        bn = _pct(r["acc_bn_recalibrated"])
        one = f"**{one}**" if r["acc_oneshot"] == best_one else one
        bn = f"**{bn}**" if r["acc_bn_recalibrated"] == best_bn else bn
        cells = [r["method"], r["framework"], f"{r['macs_ratio']:.4f}", f"{r['params_ratio']:.4f}",
                 one, bn] + [_pct(r.get("acc_by_steps", {}).get(s)) for s in steps] + [_speed(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _base(row: str) -> str:
    """'hobs-uniform@damp=0.1' -> 'hobs'; 'tp-l1-global' -> 'tp'."""
    return row.partition("@")[0].partition("-")[0]


def goals(done: list[dict], models: list[str]) -> list[str]:
    """The issue's goals, judged on the rows present (never assumed)."""
    out = ["## Goals (from the issue) and whether they were met", "",
           f"* With no fine-tuning, H-OBS (including BN re-estimation) loses at most {GOAL_2X} "
           f"points of top-1 on ResNet-56 at 2x fewer MACs and at most {GOAL_3X} at 3x.",
           "* H-OBS's accuracy right after pruning beats every other method's.", ""]
    if "resnet56" not in models:
        out.append("ResNet-56 was not part of this run: the goals are not evaluated here.")
        return out
    for target, goal in ((0.5, GOAL_2X), (0.333, GOAL_3X)):
        rows = [r for r in done if r["model"] == "resnet56" and abs(r["target_macs_ratio"] - target) < 1e-3]
        hobs = [r for r in rows if _base(r["method"]) == "hobs"]
        label = f"ResNet-56 at {1 / target:.0f}x fewer MACs (kept {target})"
        if not hobs:
            out.append(f"* {label}: **not evaluated** - no `hobs` row ran (the method was not "
                       f"registered in this checkout, or its row is missing).")
            continue
        for h in hobs:
            drop = 100 * (h["acc_dense"] - h["acc_bn_recalibrated"])
            others = [r for r in rows if _base(r["method"]) != "hobs"]
            best_one = max(others, key=lambda r: r["acc_oneshot"], default=None)
            best_bn = max(others, key=lambda r: r["acc_bn_recalibrated"], default=None)
            verdict = "met" if drop <= goal else "NOT met"
            out.append(f"* {label}, row `{h['method']}`: loses {drop:.2f} points after BN "
                       f"re-estimation (goal <= {goal}): **{verdict}**.")
            if best_one is not None and best_bn is not None:  # both or neither: same rows
                win1 = h["acc_oneshot"] > best_one["acc_oneshot"]
                winb = h["acc_bn_recalibrated"] > best_bn["acc_bn_recalibrated"]
                out.append(f"  Right after pruning: {_pct(h['acc_oneshot'])}% vs the best other "
                           f"row `{best_one['method']}` {_pct(best_one['acc_oneshot'])}%: "
                           f"**{'beats' if win1 else 'does NOT beat'}** every other row; after BN "
                           f"re-estimation {_pct(h['acc_bn_recalibrated'])}% vs `{best_bn['method']}` "
                           f"{_pct(best_bn['acc_bn_recalibrated'])}%: "
                           f"**{'beats' if winb else 'does NOT beat'}**.")
    return out


def plot(done: list[dict], models: list[str], targets: list[float], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, t) for m in models for t in targets
              if any(r["model"] == m and abs(r["target_macs_ratio"] - t) < 1e-9 for r in done)]
    if not panels or not any(r.get("acc_by_steps") for r in done):
        return  # no fine-tuning ran: nothing to plot (the md says so)
    methods = sorted({r["method"] for r in done})
    cmap = plt.get_cmap("tab20")
    style = {m: (cmap(i % 20), "o^sDv<>ph*"[i % 10]) for i, m in enumerate(methods)}
    # One row per (model, target): every row on the left; on the right the rows with a
    # fine-tuning curve, zoomed to the last 5 points below the dense accuracy, where the
    # methods' few-step differences are (points below it leave the panel).
    fig, axes = plt.subplots(len(panels), 2, figsize=(15, 4.6 * len(panels)), squeeze=False)
    for (ax, zoom), (m, t) in zip(axes, panels):
        recs = [r for r in done if r["model"] == m and abs(r["target_macs_ratio"] - t) < 1e-9]
        steps = sorted({int(s) for r in recs for s in r.get("acc_by_steps", {})})
        xs = [0] + steps
        dense = 100 * recs[0]["acc_dense"]
        for r in sorted(recs, key=lambda r: r["method"]):
            ys = [r["acc_bn_recalibrated"]] + [r.get("acc_by_steps", {}).get(str(s)) for s in steps]
            pts = [(x, 100 * y) for x, y in zip(xs, ys) if y is not None]
            color, marker = style[r["method"]]
            kw = dict(marker=marker, color=color, label=r["method"], linewidth=1.6,
                      linestyle="--" if r["framework"] == "torch-pruning" else "-")
            ax.plot(*zip(*pts), **kw)
            if len(pts) > 1:
                zoom.plot(*zip(*pts), **kw)
        finals = [100 * y for r in recs for y in [r["acc_bn_recalibrated"], *r.get("acc_by_steps", {}).values()]]
        for a, lim, what in ((ax, (max(min(finals) - 2, 0), min(max(finals + [dense]) + 1, 100)), "all rows"),
                             (zoom, (dense - 5, dense + 0.5), "rows with a curve, last 5 points")):
            a.axhline(dense, color="black", linewidth=1, linestyle=":", label="dense")
            a.set_xscale("symlog", linthresh=50)
            a.set_xticks(xs)
            a.set_xticklabels(["BN re-est."] + [str(s) for s in steps])
            a.set_ylim(*lim)
            a.set_title(f"{m}, {1 / t:.1f}x fewer MACs (kept {t}): {what}")
            a.set_xlabel("fine-tuning steps (batch 128; same recipe for every row)")
            a.set_ylabel("Fashion-MNIST test top-1 (%)")
            a.grid(alpha=0.3)
    seen: dict[str, Any] = {}  # legend label -> its handle
    for ax in axes.flat:  # every row of every panel, once (panels hold different rows)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    labels, handles = list(seen), list(seen.values())
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=9,
               frameon=False)
    legend_in = 0.35 + 0.22 * -(-len(labels) // 5)  # the legend's height in inches
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records: list[dict], workdir: str, out: str, command: str, models: list[str],
                 targets: list[float], rows: list[str], notes: list[str] | None = None) -> None:
    """``out``.md / .json / _curve.png from the cached ``records`` of this selection."""
    sel = [r for r in records if r["model"] in models
           and any(abs(r["target_macs_ratio"] - t) < 1e-9 for t in targets) and r["method"] in rows]
    done = [r for r in sel if "refused" not in r]
    refused = [r for r in sel if "refused" in r]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump([{k: r.get(k) for k in KEYS} for r in done], f, indent=1)
    png = out + "_curve.png"
    plot(done, models, targets, png)
    steps = sorted({s for r in done for s in r.get("acc_by_steps", {})}, key=int)
    md = ["# One-shot pruning on Fashion-MNIST: ours vs Torch-Pruning at equal MACs", "",
          "Generated by `benchmarks/oneshot_fmnist.py` from its cached rows; every number below "
          "was measured by that script (nothing hand-edited).", "",
          f"* Report command: `{command}`",
          f"* Device: {machine.cpu_model()}, {os.cpu_count()} CPU cores (shared with other jobs), no GPU",
          f"* Date: {datetime.date.today().isoformat()}; jax {_version('jax')}, flax {_version('flax')}, "
          f"torch {_version('torch')}, torch-pruning {_version('torch-pruning')}",
          "* Accuracy: Fashion-MNIST test set (10,000 images), top-1 in %; MACs/params: our analytic "
          "counter at 28x28x1, kept fraction of the dense model's.",
          "* BN re-estimation: the same 2048 training images (seed 0, no augmentation) for every row.",
          "* Fine-tuning: one recipe for every row (SGD momentum 0.9, lr 0.01 cosine to 0, weight "
          "decay 5e-4, batch 128, augmentation, seed 0, KD off), started from the BN-re-estimated "
          "network; one run of the longest length, evaluated at its checkpoints.",
          "* Latency speedup: dense / pruned median time, jitted Flax on this CPU, batch 1 and 64, "
          "timed alternately in one process (Torch-Pruning's models are converted back to Flax, so "
          "every row is timed by the same runtime).",
          "* Iso-MACs: a row whose MACs miss its target by more than 1% is refused (listed below, "
          "never tabulated).", ""]
    made = sorted({c for r in sel for c in (r.get("command"), r.get("finetune_command")) if c})
    if made:
        md += ["Commands that produced the rows (each run adds what the row cache lacks):", ""]
        md += [f"    {c}" for c in made] + [""]
    md += goals(done, models) + [""]
    for m in models:
        for t in targets:
            recs = [r for r in done if r["model"] == m and abs(r["target_macs_ratio"] - t) < 1e-9]
            if not recs:
                continue
            md += [f"## {m}, kept {t} of the MACs ({1 / t:.1f}x fewer); dense top-1 "
                   f"{_pct(recs[0]['acc_dense'])}%", ""]
            main = [r for r in recs if "@" not in r["method"]]
            abl = [r for r in recs if "@" in r["method"]]
            md += table(sorted(main, key=lambda r: rows.index(r["method"])), steps) + [""]
            if abl:
                ref = [r for r in main if _base(r["method"]) in {_base(a["method"]) for a in abl}]
                md += [f"Ablation ({m}, kept {t}): one option changed per row against the "
                       f"method's defaults (the `hobs` row); same measurement.", ""]
                md += table(sorted(ref + abl, key=lambda r: rows.index(r["method"])), steps) + [""]
    if os.path.exists(png) and steps:
        md += [f"![accuracy vs fine-tuning steps]({os.path.basename(png)})", ""]
    elif not steps:
        md += ["No fine-tuning curve: no row of this selection was fine-tuned (see the notes).", ""]
    ours: dict[str, dict] = {}
    for r in done:
        if r["framework"] == "hobs_jax" and r.get("resolved_options") is not None:
            ours.setdefault(r["method"], r["resolved_options"])
    if ours:
        md += ["## Options of our rows (resolved: the method's defaults plus the row's settings)", ""]
        md += [f"* `{m}`: `{json.dumps(o, sort_keys=True)}`" for m, o in sorted(ours.items())] + [""]
    tp: dict[str, list[str]] = {}
    for r in done:
        if r["framework"] == "torch-pruning" and "pruning_ratio" in r:
            tp.setdefault(r["method"], []).append(f"{r['model']} kept {r['target_macs_ratio']}: "
                                                  f"pruning_ratio {r['pruning_ratio']:.4f}")
    if tp:
        md += ["## Torch-Pruning's channel ratio found by bisection (to land on the MACs target)", ""]
        md += [f"* `{m}`: " + "; ".join(v) for m, v in sorted(tp.items())] + [""]
    if notes:
        md += ["## Notes on this run", ""] + [f"* {n}" for n in notes] + [""]
    if refused:
        md += ["## Refused rows (iso-MACs rule)", ""]
        md += [f"* {r['model']} kept {r['target_macs_ratio']}: `{r['method']}` - {r['refused']}"
               for r in refused] + [""]
    have = {(r["model"], round(r["target_macs_ratio"], 6), r["method"]) for r in sel}
    missing = [(m, t, r) for m in models for t in targets for r in rows if (m, round(t, 6), r) not in have]
    if missing:
        md += ["## Rows not run", ""]
        md += [f"* {m} kept {t}: `{r}`" for m, t, r in missing] + [""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(md))
    print(f"wrote {out}.md, {out}.json" + (f", {png}" if os.path.exists(png) else ""))
