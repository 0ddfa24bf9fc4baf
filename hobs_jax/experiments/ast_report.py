"""docs/results/ast_fmnist.md and its plots from the rows of ast_fmnist.json (written after
every finished row, and by ``python -m hobs_jax.experiments.ast_fmnist --report_only``)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from typing import Any

import numpy as np

CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Boot")


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = _mean_std(values)
    return f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if len(values) > 1 else "")


def with_speedups(rows: list[dict]) -> list[dict]:
    """Rows plus ``speedup`` = wall(full, same task and seed) / wall(row) and
    ``delta_top1`` (points) against that full row (None without one)."""
    full = {(r["task"], r["seed"]): r for r in rows if r["mode"] == "full"}
    out = []
    for r in rows:
        f = full.get((r["task"], r["seed"]))
        cpu = (f["cpu_seconds"] / r["cpu_seconds"] if f and f.get("cpu_seconds")
               and r.get("cpu_seconds") else None)
        out.append({**r, "speedup": f["wall_seconds"] / r["wall_seconds"] if f else None,
                    "speedup_cpu": cpu,
                    "delta_top1": 100 * (r["acc_top1"] - f["acc_top1"]) if f else None})
    return out


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        g[(r["task"], r["mode"], r["score"] or "", r["target_rate"])].append(r)
    order = {"full": 0, "ast": 1, "random": 2, "infobatch": 3}
    return dict(sorted(g.items(), key=lambda kv: (kv[0][0] != "train", kv[0][3],
                                                   order[kv[0][1]], kv[0][2])))


def _goal_lines(rows: list[dict]) -> list[str]:
    lines = []
    g = groups(rows)
    for task in ("train", "finetune"):
        for (t, mode, score, rate), rs in g.items():
            if t != task or mode != "ast" or not 0.1 <= rate <= 0.2 or score != "loss":
                continue
            sp = [r["speedup"] for r in rs if r["speedup"]]
            spc = [r["speedup_cpu"] for r in rs if r.get("speedup_cpu")]
            dl = [r["delta_top1"] for r in rs if r["delta_top1"] is not None]
            if not sp:
                continue
            need_sp, need_dl = (3.0, -1.0) if task == "train" else (2.0, 0.0)
            fast = min(np.mean(sp), np.mean(spc) if spc else np.inf)
            ok = fast >= need_sp and np.mean(dl) >= need_dl
            cpu_txt = f", {np.mean(spc):.2f}x in CPU time" if spc else ""
            lines.append(f"- {task}, AST at {rate:g}: speedup {np.mean(sp):.2f}x wall{cpu_txt} "
                         f"(goal >= {need_sp:g}x), top-1 {np.mean(dl):+.2f} points vs full (goal "
                         f">= {need_dl:+.1f}): **{'met' if ok else 'not met'}**")
        for (t, mode, score, rate), rs in g.items():
            if t != task or mode != "ast" or score != "loss":
                continue
            for other in ("random", "infobatch"):
                o = g.get((task, other, "", rate))
                if not o:
                    continue
                a, b = np.mean([r["acc_top1"] for r in rs]), np.mean([r["acc_top1"] for r in o])
                verdict = ("beats" if a > b else "ties" if a == b else "loses to")
                lines.append(f"- {task}, rate {rate:g}: AST {100 * a:.2f}% {verdict} {other} "
                             f"{100 * b:.2f}%")
    within = [(r["task"], r["score"], r["target_rate"], r["seed"], r["ast"])
              for r in rows if r["mode"] == "ast" and r.get("ast")]
    within = [w for w in within if w[4].get("windows_within_2pt") is not None]
    if within:
        bad = [w for w in within if w[4].get("windows_within_2pt") != 1.0]
        lines.append(f"- rate within +-2 points of the target after warm-up (50-batch windows, "
                     f"the first one excluded): {len(within) - len(bad)} of {len(within)} AST "
                     f"runs" + ("" if not bad else "; not in: " + ", ".join(
                         f"{t} {s} {r:g} seed {sd} ({100 * (a['windows_within_2pt'] or 0):.0f}% "
                         f"of windows, max deviation {100 * a['max_window_deviation']:.1f} pt)"
                         for t, s, r, sd, a in bad)))
    return lines


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("train", "finetune") if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.0 * len(tasks), 4.2), squeeze=False)
    styles = {"ast": ("tab:blue", "o"), "random": ("tab:gray", "s"),
              "infobatch": ("tab:green", "^")}
    for ax, task in zip(axes[0], tasks):
        g = groups([r for r in rows if r["task"] == task])
        full = [r for (t, m, s, q), rs in g.items() if m == "full" for r in rs]
        if full:
            m, s = _mean_std([r["acc_top1"] for r in full])
            ax.axhline(100 * m, color="k", lw=1, ls="--", label="full data")
            ax.axhspan(100 * m - 1, 100 * m, color="k", alpha=0.06)
        for mode, (color, marker) in styles.items():
            pts = [(q, rs) for (t, mo, sc, q), rs in g.items()
                   if mo == mode and (mode != "ast" or sc == "loss")]
            if not pts:
                continue
            # InfoBatch rows are placed at the AST rate whose wall time they match
            xs = [q for q, _ in pts]
            ys = [100 * _mean_std([r["acc_top1"] for r in rs])[0] for _, rs in pts]
            es = [100 * _mean_std([r["acc_top1"] for r in rs])[1] for _, rs in pts]
            ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, capsize=3,
                        label=mode if mode != "infobatch" else "InfoBatch (same wall time)")
        ax.set_xlabel("activation rate (fraction of samples back-propagated)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title({"train": "ResNet-20 from scratch",
                      "finetune": "H-OBS ResNet-56 (3x) fine-tuned"}[task])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict, out: str, schedule: Any) -> None:
    """Writes ``<out>.md``, ``<out>.png`` and ``<out>_trace.png``."""
    rows = with_speedups([r for r in data["rows"] if r.get("schedule_key") == schedule.key()])
    if not rows:
        return
    s = data.get("schedule", {})
    dev = sorted({r["device"] for r in rows})
    name = os.path.basename(out)
    commands = sorted({r.get("command") or data.get("command", "") for r in rows})
    lines = [
        "# Adaptive Sparse Training on Fashion-MNIST",
        "",
        "The whole grid is `python -m hobs_jax.experiments.ast_fmnist` (defaults: both tasks, "
        "rates 0.05-0.2, every mode, the scoring ablation, 3 seeds). The rows below come from "
        "these slices of it: " + "; ".join(f"`{c}`" for c in commands) + f". Rows are cached "
        f"in `{name}.json` and skipped on a rerun; `--report_only` rewrites this page. Device: "
        f"{'; '.join(dev)}. The machine was shared with other jobs, so wall times are noisy; "
        f"speedups are ratios against the `full` row of the same task and seed.",
        "",
        f"Scaled-down schedule (CPU): {s.get('train_examples')} of the 60,000 training images "
        f"(a fixed random subset), batch {s.get('batch_size')}; train = ResNet-20 from "
        f"scratch, {s.get('train_epochs')} epochs, SGD Nesterov lr {s.get('train_lr')} "
        f"cosine, AST warm-up {s.get('warmup_steps')} full steps; finetune = the H-OBS "
        f"ResNet-56 pruned to 1/3 of the MACs, {s.get('finetune_epochs')} epoch(s) at lr "
        f"{s.get('finetune_lr')}. AST: PI gains kp {s.get('kp')}, ki {s.get('ki')}, EMA "
        f"{s.get('ema')}, stale scores with {s.get('score_refresh')} of each batch re-scored. "
        f"All rates are of the data the full run sees in the same epochs. Test: all 10,000 "
        f"images. Energy: not measured (no power reading on a CPU; never estimated).",
        "",
        "| task | mode | score | rate | achieved | top-1 (%) | top-5 (%) | Δ top-1 (pt) | "
        "back-prop samples | scored samples | wall (s) | speedup | CPU speedup | seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (task, mode, score, rate), rs in groups(rows).items():
        sp = [r["speedup"] for r in rs if r["speedup"]]
        spc = [r["speedup_cpu"] for r in rs if r.get("speedup_cpu")]
        dl = [r["delta_top1"] for r in rs if r["delta_top1"] is not None]
        rate_txt = f"{rate:g}" if mode != "infobatch" else f"= AST {rate:g} wall"
        lines.append(
            f"| {task} | {mode} | {score or '-'} | {rate_txt} | "
            f"{np.mean([r['achieved_rate'] for r in rs]):.3f} | {_pm([r['acc_top1'] for r in rs])} | "
            f"{_pm([r['acc_top5'] for r in rs])} | "
            f"{(_pm(dl, 1.0) if dl else '-')} | {int(np.mean([r['samples_backpropagated'] for r in rs])):,} | "
            f"{int(np.mean([r['samples_scored'] for r in rs])):,} | "
            f"{np.mean([r['wall_seconds'] for r in rs]):.0f} | "
            f"{(f'{np.mean(sp):.2f}x' if sp else '-')} | "
            f"{(f'{np.mean(spc):.2f}x' if spc else '-')} | {len(rs)} |")
    goals = _goal_lines(rows)
    if goals:
        lines += ["", "## Goals", "", *goals]
    # per-class accuracy: which classes gain or lose against full training
    full = {(r["task"], r["seed"]): r for r in rows if r["mode"] == "full"}
    pc = []
    for (task, mode, score, rate), rs in groups(rows).items():
        if mode == "full":
            continue
        d = [np.subtract(r["per_class_top1"], full[(r["task"], r["seed"])]["per_class_top1"])
             for r in rs if (r["task"], r["seed"]) in full]
        if d:
            m = 100 * np.mean(d, axis=0)
            pc.append(f"| {task} | {mode} {score} {rate:g} | " + " | ".join(f"{v:+.1f}" for v in m)
                      + " |")
    if pc:
        lines += ["", "## Per-class top-1 against full training (points, mean over seeds)", "",
                  "| task | row | " + " | ".join(CLASSES) + " |",
                  "|---|---|" + "---:|" * len(CLASSES), *pc]
    ctl_rows = [r for r in rows if r["mode"] == "ast" and r.get("ast")]
    if ctl_rows:
        lines += ["", "## Controller", "",
                  "| task | score | target | achieved | windows within ±2 pt | max window dev. "
                  "(pt) | threshold range | scoring s | selection s | seed |",
                  "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in sorted(ctl_rows, key=lambda r: (r["task"], r["target_rate"], r["score"], r["seed"])):
            a = r["ast"]
            w, dev = a.get("windows_within_2pt"), a.get("max_window_deviation")
            w_txt = "-" if w is None else f"{100 * w:.0f}%"
            dev_txt = "-" if dev is None else f"{100 * dev:.1f}"
            lines.append(
                f"| {r['task']} | {r['score']} | {r['target_rate']:g} | {a['achieved_rate']:.3f} | "
                f"{w_txt} | {dev_txt} | "
                f"{a.get('threshold_min') or 0:.3g}-{a.get('threshold_max') or 0:.3g} | "
                f"{a['seconds_scoring']:.0f} | {a['seconds_selection']:.0f} | {r['seed']} |")
    png = out + ".png"
    try:
        plot(rows, png)
        lines += ["", f"![top-1 against the activation rate]({name}.png)"]
        trace = next((r.get("trace_png") for r in rows if r["mode"] == "ast" and r["task"] == "train"
                      and r["score"] == "loss" and r.get("trace_png")
                      and os.path.exists(r["trace_png"])), None)
        if trace:
            shutil.copyfile(trace, out + "_trace.png")
        if os.path.exists(out + "_trace.png"):
            lines += ["", "Controller trace of one AST run (threshold; rate per batch, EMA and "
                          "50-batch mean):", "", f"![controller trace]({name}_trace.png)"]
    except ImportError:
        pass
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
