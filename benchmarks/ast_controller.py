"""Tune the AST PI controller in closed loop on synthetic score streams (seconds, numpy).

    python benchmarks/ast_controller.py            # -> docs/results/ast_controller.{md,json,png}

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
import json
import os

import numpy as np

from hobs_jax.train import ast_control as ctl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "ast_controller"))
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args()
    rows = [evaluate(kp, ki, args.seeds) for kp, ki in GAINS]
    with open(args.out + ".json", "w") as f:
        json.dump({"command": "python benchmarks/ast_controller.py", "seeds": args.seeds,
                   "batch": 128, "ema": 0.3, "rows": rows}, f, indent=1)
    lines = ["# AST controller tuning (closed-loop simulation)", "",
             "Command: `python benchmarks/ast_controller.py` (numpy, seconds; any machine). "
             f"{args.seeds} seeds, batch 128, EMA 0.3, targets 0.05/0.1/0.2. Streams and "
             "metrics: see the script's docstring. Goal: max window deviation <= 2 points.", "",
             "| kp | ki | stream | max 50-batch deviation (pt) | spread / sampling noise | "
             "step 0.1->0.2 settles (batches) | overshoot | gain check |",
             "|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        for name, m in r["streams"].items():
            settle = m.get("step_settle_batches", "-")
            over = f"{100 * m['step_overshoot']:.0f}%" if "step_overshoot" in m else "-"
            lines.append(f"| {r['kp']:g} | {r['ki']:g} | {name} | "
                         f"{100 * m['max_window_dev']:.2f} | {m['spread_over_noise']:.2f} | "
                         f"{settle} | {over} | {r['gain_check']} |")
    plot(args.out + ".png", max(4, args.seeds // 2))
    lines += ["", f"![rate under drift and shock]({os.path.basename(args.out)}.png)", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
