"""docs/results/ast_fmnist{,_per_class,_controller}.{json,md,tex} (through
:class:`~hobs_jax.experiments.table.ResultTable`) and its plots from the sweep's row cache
``docs/results/records/ast_fmnist.json`` (written after every finished row, and by
``python -m hobs_jax.experiments.ast_fmnist --report_only``, which trains nothing)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from typing import Any

import numpy as np

from hobs_jax.experiments.table import Column, ResultTable

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


def _loss_based(score: str) -> bool:
    """The loss score with or without the soft selection: the rows the goals are about
    (the scoring ablation's other scores are compared in their own table)."""
    return score in ("loss", "loss:soft")


def _goal_scores(rows: list[dict], task: str) -> set[str]:
    """The AST scores the goals are about for ``task``: those run at more than one rate
    (a grid's ``--score``; the ablation runs its scores at one rate), else the loss-based
    ones (:func:`_loss_based`)."""
    rates: dict[str, set] = {}
    for r in rows:
        if r["task"] == task and r["mode"] == "ast":
            rates.setdefault(r["score"], set()).add(r["target_rate"])
    swept = {score for score, rs in rates.items() if len(rs) > 1}
    return swept or {score for score in rates if _loss_based(score)}


def _ast_name(score: str) -> str:
    return "AST" if score == "loss" else f"AST ({score})"


def _goals(rows: list[dict]) -> tuple[list[tuple[str, bool | None, str]], list[str]]:
    """The page's goals ``(text, met, detail)`` (speed and accuracy of AST at rates 0.1-0.2
    with loss scores; the controller's rate within 2 points) and comparisons (notes)."""
    goals: list[tuple[str, bool | None, str]] = []
    notes: list[str] = []
    g = groups(rows)
    for task in ("train", "finetune"):
        main = _goal_scores(rows, task)
        for (t, mode, score, rate), rs in g.items():
            if t != task or mode != "ast" or not 0.1 <= rate <= 0.2 or score not in main:
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
            goals.append((f"{task}, {_ast_name(score)} at {rate:g}: speedup >= {need_sp:g}x and top-1 >= "
                          f"{need_dl:+.1f} points vs full", bool(ok),
                          f"speedup {np.mean(sp):.2f}x wall{cpu_txt}, top-1 {np.mean(dl):+.2f} points vs full"))
        for (t, mode, score, rate), rs in g.items():
            if t != task or mode != "ast" or score not in main:
                continue
            for other in ("random", "infobatch"):
                o = g.get((task, other, "", rate))
                if not o:
                    continue
                a, b = np.mean([r["acc_top1"] for r in rs]), np.mean([r["acc_top1"] for r in o])
                verdict = ("beats" if a > b else "ties" if a == b else "loses to")
                notes.append(f"{task}, rate {rate:g}: {_ast_name(score)} {100 * a:.2f}% {verdict} {other} "
                             f"{100 * b:.2f}%")
    runs = [(r["task"], r["score"], r["target_rate"], r["seed"], r["ast"])
            for r in rows if r["mode"] == "ast" and r.get("ast")]
    within = [w for w in runs if w[4].get("windows_within_2pt") is not None]
    # a run with a single window (the excluded first one) has nothing to judge: say how many
    short = [w for w in runs if w[4].get("windows_within_2pt") is None and w[4].get("max_window_deviation") is not None]
    if within:
        bad = [w for w in within if w[4].get("windows_within_2pt") != 1.0]
        goals.append(("rate within +-2 points of the target after warm-up (50-batch windows, the first one "
                      "excluded) in every AST run", not bad, f"{len(within) - len(bad)} of {len(within)} AST runs"
                      + ("" if not short else
                         f"; {len(short)} more too short to judge (one window each; deviation at most "
                         f"{100 * max(w[4]['max_window_deviation'] for w in short):.1f} pt)")
                      + ("" if not bad else "; not in: " + ", ".join(
                          f"{t} {s} {r:g} seed {sd} ({100 * (a['windows_within_2pt'] or 0):.0f}% "
                          f"of windows, max deviation {100 * a['max_window_deviation']:.1f} pt)"
                          for t, s, r, sd, a in bad))))
    return goals, notes


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
        # AST: the scores the goals are about (the grid's swept score), one line each
        lines: list[tuple[str, str | None, str, str]] = [
            ("ast", score, ("tab:blue", "tab:purple", "tab:orange")[i % 3], "o")
            for i, score in enumerate(sorted(_goal_scores(rows, task)))]
        lines += [(mode, None, color, marker) for mode, (color, marker) in styles.items() if mode != "ast"]
        for mode, score, color, marker in lines:
            pts = sorted((q, rs) for (t, mo, sc, q), rs in g.items()
                         if mo == mode and (score is None or sc == score))
            if not pts:
                continue
            # InfoBatch rows are placed at the AST rate whose wall time they match
            xs = [q for q, _ in pts]
            ys = [100 * _mean_std([r["acc_top1"] for r in rs])[0] for _, rs in pts]
            es = [100 * _mean_std([r["acc_top1"] for r in rs])[1] for _, rs in pts]
            label = ("InfoBatch (same wall time)" if mode == "infobatch" else
                     _ast_name(score) if mode == "ast" and score else mode)
            ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, capsize=3, label=label)
        ax.set_xlabel("activation rate (fraction of samples back-propagated)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title({"train": "ResNet-20 from scratch",
                      "finetune": "H-OBS ResNet-56 (3x) fine-tuned"}[task])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NAME = "ast_fmnist"


def tables(data: dict, schedule_key: str | None = None, name: str = NAME) -> list[ResultTable]:
    """The page's three tables from the sweep's stored rows (``data``: the row cache
    :class:`hobs_jax.experiments.ast_fmnist.Store` keeps in ``records/NAME.json``), for the
    schedule ``schedule_key`` (default: the record's own): the grid (mean over seeds, with the
    goals), per-class top-1 against full training, and the controller of every AST run."""
    key = schedule_key or data.get("schedule_key")
    rows = with_speedups([r for r in data["rows"] if r.get("schedule_key") == key])
    s = data.get("schedule", {})
    ctx = {"dataset": "fashion_mnist", "split": "test"}
    commands = sorted({r.get("command") or data.get("command", "") for r in rows})
    src = {f"{name}@{key}": {"command": "; ".join(commands), "date": data.get("updated"), "schedule": key}}
    main = ResultTable(name, "Adaptive Sparse Training on Fashion-MNIST", [
        Column("task", "task"), Column("mode", "mode"), Column("score", "score"), Column("rate", "rate"),
        Column("achieved", "achieved", "float", 3), Column("top1", "top-1 (%)", "pm"),
        Column("top5", "top-5 (%)", "pm"), Column("delta", "Δ top-1 (pt)", "pm"),
        Column("backprop", "back-prop samples", "int"), Column("scored", "scored samples", "int"),
        Column("wall", "wall (s)", "float", 0), Column("speedup", "speedup", "speedup"),
        Column("speedup_cpu", "CPU speedup", "speedup"), Column("seeds", "seeds", "int")],
        iso_tolerance=None, description=[
            "The whole grid is `python -m hobs_jax.experiments.ast_fmnist` (defaults: both tasks, rates 0.05-0.2, "
            "every mode, the scoring ablation, 3 seeds); the rows come from the slices named under Sources. Rows "
            f"are cached in `records/{name}.json` and skipped on a rerun; `--report_only` rebuilds these tables "
            "from it. The machine was shared with other jobs, so wall times are noisy; speedups are ratios against "
            "the `full` row of the same task and seed.",
            f"Scaled-down schedule (CPU): {s.get('train_examples')} of the 60,000 training images (a fixed random "
            f"subset), batch {s.get('batch_size')}; train = ResNet-20 from scratch, {s.get('train_epochs')} epochs, "
            f"SGD Nesterov lr {s.get('train_lr')} cosine, AST warm-up {s.get('warmup_steps')} full steps; finetune "
            f"= the H-OBS ResNet-56 pruned to 1/3 of the MACs, {s.get('finetune_epochs')} epoch(s) at lr "
            f"{s.get('finetune_lr')}. AST: PI gains kp {s.get('kp')}, ki {s.get('ki')}, EMA {s.get('ema')}, stale "
            f"scores with {s.get('score_refresh')} of each batch re-scored"
            + (f"; the BN running statistics re-estimated on {s['bn_reestimate']} uniformly drawn training images "
               "after each selective run (`train.ast.bn_reestimate`, counted in its wall time)"
               if s.get("bn_reestimate") else "")
            + ". All rates are of the data the full run "
            "sees in the same epochs. Test: all 10,000 images. Energy: not measured (no power reading on a CPU; "
            "never estimated)."])

    def pm(values, scale=1.0):
        if not values:
            return None
        m, sd = _mean_std([scale * v for v in values])
        return {"mean": m, "std": sd if len(values) > 1 else None, "n": len(values)}

    for (task, mode, score, rate), rs in groups(rows).items():
        sp = [r["speedup"] for r in rs if r["speedup"]]
        spc = [r["speedup_cpu"] for r in rs if r.get("speedup_cpu")]
        dl = [r["delta_top1"] for r in rs if r["delta_top1"] is not None]
        main.add({**ctx, "device": rs[0]["device"], "source": next(iter(src)), "task": task, "mode": mode,
                  "score": score or None, "target_rate": rate,
                  "rate": f"{rate:g}" if mode != "infobatch" else f"= AST {rate:g} wall",
                  "achieved": float(np.mean([r["achieved_rate"] for r in rs])),
                  "top1": pm([r["acc_top1"] for r in rs]), "top5": pm([r["acc_top5"] for r in rs]),
                  "delta": pm(dl, 0.01), "backprop": int(np.mean([r["samples_backpropagated"] for r in rs])),
                  "scored": int(np.mean([r["samples_scored"] for r in rs])),
                  "wall": float(np.mean([r["wall_seconds"] for r in rs])),
                  "speedup": float(np.mean(sp)) if sp else None,
                  "speedup_cpu": float(np.mean(spc)) if spc else None, "seeds": len(rs)})
    goals, notes = _goals(rows)
    for text, met, detail in goals:
        main.goal(text, met, detail)
    for n in notes:
        main.note(n)
    once = sorted({(r["task"], r.get("reference_model"), round(r["reference_seconds_once"]))
                   for r in rows if r.get("reference_seconds_once")})
    for task, model, sec in once:
        main.note(f"{task}, score reducible: the reference losses ({model}'s cross entropy on every training "
                  f"example, computed once and shared by every reducible row, rate and seed) took {sec} s, "
                  f"not counted in the rows' wall times")
    main.note(f"Per-class top-1 against full training: `{name}_per_class.md`; the controller of every AST run: "
              f"`{name}_controller.md`.")
    main.note(f"![top-1 against the activation rate]({name}.png)")
    if any(_traced(r) for r in rows):  # write() copies that run's trace beside the page
        main.note(f"Controller trace of one AST run (threshold; rate per batch, EMA and 50-batch mean): "
                  f"![controller trace]({name}_trace.png)")
    main.add_sources(src)

    pc = ResultTable(f"{name}_per_class", "AST on Fashion-MNIST: per-class top-1 against full training "
                     "(points, mean over seeds)", [Column("task", "task"), Column("row", "row"),
                                                  *[Column(f"c{i}", c, "points", 1) for i, c in enumerate(CLASSES)]],
                     iso_tolerance=None)
    full = {(r["task"], r["seed"]): r for r in rows if r["mode"] == "full"}
    for (task, mode, score, rate), rs in groups(rows).items():
        if mode == "full":
            continue
        d = [np.subtract(r["per_class_top1"], full[(r["task"], r["seed"])]["per_class_top1"])
             for r in rs if (r["task"], r["seed"]) in full]
        if d:
            m = np.mean(d, axis=0)
            pc.add({**ctx, "device": rs[0]["device"], "source": next(iter(src)), "task": task,
                    "row": f"{mode} {score} {rate:g}", **{f"c{i}": float(v) for i, v in enumerate(m)}})
    pc.add_sources(src)

    ctl = ResultTable(f"{name}_controller", "AST on Fashion-MNIST: the controller of every AST run", [
        Column("task", "task"), Column("score", "score"), Column("target", "target"),
        Column("achieved", "achieved", "float", 3), Column("within", "windows within ±2 pt", "share", 1),
        Column("max_dev", "max window dev. (pt)", "pct", 1), Column("threshold", "threshold range"),
        Column("scoring_s", "scoring s", "float", 0), Column("selection_s", "selection s", "float", 0),
        Column("seed", "seed", "int")], iso_tolerance=None)
    for r in sorted([r for r in rows if r["mode"] == "ast" and r.get("ast")],
                    key=lambda r: (r["task"], r["target_rate"], r["score"], r["seed"])):
        a = r["ast"]
        ctl.add({**ctx, "device": r["device"], "source": next(iter(src)), "task": r["task"], "score": r["score"],
                 "target": f"{r['target_rate']:g}", "target_rate": r["target_rate"], "achieved": a["achieved_rate"],
                 "within": a.get("windows_within_2pt"), "max_dev": a.get("max_window_deviation"),
                 "threshold": f"{a.get('threshold_min') or 0:.3g}-{a.get('threshold_max') or 0:.3g}",
                 "scoring_s": a["seconds_scoring"], "selection_s": a["seconds_selection"], "seed": r["seed"]})
    ctl.add_sources(src)
    return [main, pc, ctl]


def render(out: str, schedule_key: str | None = None) -> list[str]:
    """The tables ``OUT*.{json,md,tex}`` from the stored row cache
    (``OUT's folder/records/NAME.json``), without training anything."""
    import json

    from hobs_jax.experiments import studies

    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    path = studies.record_path(name, folder)
    if not os.path.exists(path):
        raise ValueError(f"no AST run record at {path}: run python -m hobs_jax.experiments.ast_fmnist first")
    with open(path) as f:
        data = json.load(f)
    paths = []
    for t in tables(data, schedule_key, name):
        paths += t.write(os.path.join(folder, t.name))
    return paths


def _traced(r: dict) -> bool:
    """The row whose controller trace the page shows: an AST run from scratch, loss score."""
    return bool(r["mode"] == "ast" and r["task"] == "train" and r["score"] == "loss" and r.get("trace_png"))


def write(data: dict, out: str, schedule: Any) -> list[str]:
    """The tables (:func:`tables`) as ``<out>*.{json,md,tex}``, ``<out>.png`` and
    ``<out>_trace.png``."""
    rows = with_speedups([r for r in data["rows"] if r.get("schedule_key") == schedule.key()])
    if not rows:
        return []
    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    paths = []
    for t in tables(data, schedule.key(), name):
        paths += t.write(os.path.join(folder, t.name))
    try:
        plot(rows, out + ".png")
        trace = next((r["trace_png"] for r in rows if _traced(r) and os.path.exists(r["trace_png"])), None)
        if trace:
            shutil.copyfile(trace, out + "_trace.png")
    except ImportError:
        pass
    return paths
