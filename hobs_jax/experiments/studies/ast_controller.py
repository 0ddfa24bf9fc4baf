"""Tune the AST PI controller in closed loop on synthetic score streams (seconds, numpy).

    python benchmarks/ast_controller.py            # -> docs/results/ast_controller.{md,json,tex,png}
    python benchmarks/ast_controller.py --render-only   # the table from records/ast_controller.json

For each gain pair it runs ``hobs_jax.train.ast_control.simulate`` (exactly the selector's
loop: running-mean normalization, reference-window threshold, PI update) over 20 seeds
on four score streams, batch 128:

* lognormal: stationary lognormal(sigma = 1) scores;
* bunched: |N(1, 0.05)| scores (a network that has learned most samples);
* drift: a tail that thins from sigma 2 to 0.6 while the scale shrinks 1% per batch;
* shock: at batch 100 the scores get 5x smaller and a twice heavier tail;

at targets 0.05, 0.1 and 0.2, and reports the worst 50-batch-window deviation from the
target after batch 100 (the +-2 point goal), the batch-to-batch spread of the rate over
the binomial sampling noise, and (except on the shock stream) the response to a target
step 0.1 -> 0.2 at batch 50 (batches until the 5-batch mean of the seed-averaged rate
stays within 2 points; overshoot in % of the step). The original AST gains (Kp 0.0015,
Ki 0.00005) are included for reference; in our units they mean almost no feedback, and
the reference window alone does the work.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hobs_jax.experiments import studies
from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.train import ast_control as ctl

NAME = "ast_controller"

REPO = "."  # paths are relative to the repository root, where the benchmark scripts run
GAINS = [(0.0015, 0.00005), (0.1, 0.02), (0.1, 0.05), (0.2, 0.1), (0.5, 0.2), (1.0, 0.5),
         (3.0, 1.0)]


def bunched(t, rng, b):
    return np.abs(1 + 0.05 * rng.standard_normal(b))


def drift(t, rng, b):
    sigma = 2.0 - 1.4 * min(t / 500, 1.0)
    return np.exp(sigma * rng.standard_normal(b) - 0.01 * t)


def shock(t, rng, b):
    return np.exp(rng.standard_normal(b)) if t < 100 else 0.2 * np.exp(2 * rng.standard_normal(b))


STREAMS = {"lognormal": ctl.lognormal_stream(1.0), "bunched": bunched, "drift": drift,
           "shock": shock}


def evaluate(kp: float, ki: float, seeds: int, steps: int = 600, batch: int = 128) -> dict:
    out: dict = {"kp": kp, "ki": ki, "streams": {}}
    for name, stream in STREAMS.items():
        devs, spreads = [], []
        for target in (0.05, 0.1, 0.2):
            cfg = ctl.ControllerConfig(target, kp, ki, 0.3)
            for seed in range(seeds):
                r = ctl.simulate(cfg, stream, steps, batch, seed=seed)["rate"][100:]
                devs.append(float(np.abs(r.reshape(-1, 50).mean(1) - target).max()))
                spreads.append(float(r.std() / np.sqrt(target * (1 - target) / batch)))
        out["streams"][name] = {"max_window_dev": max(devs),
                                "spread_over_noise": float(np.mean(spreads))}
        if name == "shock":  # its own disturbance would blur a step response
            continue
        cfg = ctl.ControllerConfig(0.1, kp, ki, 0.3)
        ens = np.mean([ctl.simulate(cfg, stream, 250, batch, seed=s,
                                    targets=lambda t: 0.1 if t < 50 else 0.2)["rate"][50:]
                       for s in range(seeds)], axis=0)
        smooth = np.convolve(ens, np.ones(5) / 5, mode="valid")
        outside = np.where(np.abs(smooth - 0.2) > 0.02)[0]
        out["streams"][name].update(
            step_settle_batches=int(outside[-1] + 1) if len(outside) else 0,
            step_overshoot=float(max(smooth.max() - 0.2, 0.0) / 0.1))
    out["gain_check"] = ctl.check_gains(ctl.ControllerConfig(0.1, kp, ki, 0.3), batch) or "ok"
    return out


def plot(path: str, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (kp, ki), color in zip([(0.0015, 0.00005), (0.1, 0.05), (1.0, 0.5)],
                               ["tab:gray", "tab:blue", "tab:red"]):
        cfg = ctl.ControllerConfig(0.1, kp, ki, 0.3)
        for ax, (name, stream) in zip(axes, [("drift", drift), ("shock", shock)]):
            ens = np.mean([ctl.simulate(cfg, stream, 400, 128, seed=s)["rate"]
                           for s in range(seeds)], axis=0)
            run = np.convolve(ens, np.ones(10) / 10, mode="valid")
            ax.plot(np.arange(9, 400), run, color=color, lw=1.2, label=f"kp {kp:g}, ki {ki:g}")
            ax.set_title(f"{name} stream, target 0.1 ({seeds}-seed mean, 10-batch mean)")
    for ax in axes:
        ax.axhspan(0.08, 0.12, color="tab:green", alpha=0.12)
        ax.axhline(0.1, color="k", lw=0.8, ls="--")
        ax.set_xlabel("candidate batch")
        ax.set_ylabel("activation rate")
        ax.set_ylim(0, 0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """Rows (one per gain pair and stream) of the run record ``main`` writes
    (``docs/results/records/ast_controller.json``)."""
    key = "ast_controller"
    rows = []
    for r in doc["rows"]:
        for name, m in r["streams"].items():
            rows.append({"kp": r["kp"], "ki": r["ki"], "kp_g": f"{r['kp']:g}", "ki_g": f"{r['ki']:g}",
                         "stream": name, "max_window_dev": m["max_window_dev"],
                         "spread_over_noise": m["spread_over_noise"],
                         "step_settle_batches": m.get("step_settle_batches"),
                         "step_overshoot": m.get("step_overshoot"), "gain_check": r["gain_check"],
                         "seeds": doc["seeds"], "batch": doc["batch"], "ema": doc["ema"], "source": key})
    return rows, {key: {"command": doc["command"], "note": "numpy, seconds; any machine"}}


def table(rows, sources, name: str = "ast_controller") -> ResultTable:
    """The closed-loop figures of every gain pair on every stream; one goal per gain pair
    (every stream's worst 50-batch window within 2 points of the target)."""
    ctx = rows[0] if rows else {"seeds": "?", "batch": "?", "ema": "?"}
    t = ResultTable(name, "AST controller tuning (closed-loop simulation)",
                    [Column("kp_g", "kp"), Column("ki_g", "ki"), Column("stream", "stream"),
                     Column("max_window_dev", "max 50-batch deviation (pt)", "pct"),
                     Column("spread_over_noise", "spread / sampling noise", "float"),
                     Column("step_settle_batches", "step 0.1->0.2 settles (batches)", "int"),
                     Column("step_overshoot", "overshoot", "share", 1), Column("gain_check", "gain check")],
                    context=("seeds", "batch", "ema"), iso_tolerance=None, description=[
                        f"numpy, seconds; any machine. {ctx['seeds']} seeds, batch {ctx['batch']}, EMA {ctx['ema']}, "
                        "targets 0.05/0.1/0.2. Streams and metrics: "
                        "`hobs_jax.experiments.studies.ast_controller`'s docstring."])
    t.extend(rows)
    for kp, ki in dict.fromkeys((r["kp"], r["ki"]) for r in rows):
        worst = max(r["max_window_dev"] for r in rows if (r["kp"], r["ki"]) == (kp, ki))
        t.goal(f"kp {kp:g}, ki {ki:g}: max window deviation <= 2 points on every stream", worst <= 0.02,
               f"worst {100 * worst:.2f} pt")
    t.note(f"![rate under drift and shock]({name}.png)")
    t.add_sources(sources)
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "ast_controller"))
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--render-only", action="store_true",
                   help="rebuild the table from the stored run record (OUT's folder/records/NAME.json), no simulating")
    args = p.parse_args(argv)
    out_dir, name = os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out)
    if not args.render_only:
        rows = [evaluate(kp, ki, args.seeds) for kp, ki in GAINS]
        studies.save_record(name, {"command": "python benchmarks/ast_controller.py", "seeds": args.seeds,
                                   "batch": 128, "ema": 0.3, "rows": rows}, out_dir)
        plot(args.out + ".png", max(4, args.seeds // 2))
    studies.render(sys.modules[__name__], out_dir, name)
    with open(args.out + ".md") as f:
        print(f.read())


if __name__ == "__main__":
    main()
