"""PNG of an AST controller trace (``workdir/ast_trace.csv``): the threshold and the
activation rate (per candidate batch, its EMA and a 50-batch running mean after warm-up)
against the target and its +-2 point band. matplotlib is imported only here."""

from __future__ import annotations

import numpy as np


def read_trace(path: str) -> dict[str, np.ndarray]:
    """The trace's columns; a row written twice (a run resumed from a checkpoint redoes the
    batches after it) keeps its last value, so the trace reads as one uninterrupted run."""
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = [line.strip().split(",") for line in f if line.strip()]
    data = np.array([[float(v) for v in r] for r in rows], np.float64).reshape(-1, len(header))
    cand = data[:, 0].astype(np.int64)
    _, last = np.unique(cand[::-1], return_index=True)
    keep = np.sort(len(cand) - 1 - last)
    data = data[keep][np.argsort(cand[keep], kind="stable")]
    return {name: data[:, i] for i, name in enumerate(header)}


def plot_trace(trace_path: str, png_path: str, *, target: float, title: str = "",
               window: int = 50) -> None:
    """Writes a two-panel PNG (threshold; rates) of the trace at ``trace_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = read_trace(trace_path)
    x = t["candidate"]
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    controlled = np.isfinite(t["threshold"])
    if controlled.any():
        ax0.plot(x[controlled], t["threshold"][controlled], lw=0.8, color="tab:purple")
        ax0.set_yscale("log")
    ax0.set_ylabel("threshold (normalized score)")
    ax0.set_title(title or "AST controller trace")
    ax1.plot(x, t["rate"], lw=0.4, alpha=0.35, color="tab:gray", label="rate (batch)")
    if controlled.any():
        ax1.plot(x[controlled], t["rate_ema"][controlled], lw=0.8, color="tab:blue",
                 label="rate EMA")
    post = t["warmup"] == 0
    if post.sum() >= window:
        run = np.convolve(t["rate"][post], np.ones(window) / window, mode="valid")
        ax1.plot(x[post][window - 1:], run, lw=1.4, color="tab:orange",
                 label=f"{window}-batch mean")
    ax1.axhline(target, color="k", lw=0.8, ls="--", label=f"target {target:g}")
    ax1.axhspan(target - 0.02, target + 0.02, color="tab:green", alpha=0.12, label="+-2 points")
    ax1.set_ylim(0, min(1.0, max(3 * target, target + 0.1)))
    ax1.set_xlabel("candidate batch")
    ax1.set_ylabel("activation rate")
    ax1.legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
