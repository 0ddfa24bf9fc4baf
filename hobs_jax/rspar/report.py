"""R-SPAR artifacts: the chosen per-group keep ratios (JSON) next to the uniform and
greedy-global allocations as a bar chart (PNG), and the learning curve (JSON + PNG).
Called by the ``rspar`` method's callers: the pipeline's prune stage and
``benchmarks/rspar_fmnist.py``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np


def allocation_record(group_ids: Sequence[int], sizes: Sequence[int],
                      allocations: Mapping[str, Sequence[float]], **extra) -> dict:
    """{'groups': [...], 'sizes': [...], 'keep': {name: [...]}, 'ratio': {name: [...]}, **extra}."""
    sizes = np.asarray(sizes, np.float64)
    keep = {k: [int(round(x)) for x in v] for k, v in allocations.items()}
    return {"groups": [int(g) for g in group_ids], "sizes": sizes.astype(int).tolist(), "keep": keep,
            "ratio": {k: (np.asarray(v) / sizes).round(4).tolist() for k, v in keep.items()}, **extra}


def save_allocation(prefix: str, record: dict, title: str = "") -> tuple[str, str]:
    """Write ``prefix.json`` and a grouped bar chart ``prefix.png`` of the keep ratio per
    group for every allocation in ``record`` (:func:`allocation_record`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(record, f, indent=1)
    names = list(record["ratio"])
    n = len(record["groups"])
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * n), 3.6))
    x = np.arange(n)
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, record["ratio"][name], width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([str(g) for g in record["groups"]], fontsize=7)
    ax.set_xlabel("channel group (graph order)")
    ax.set_ylabel("keep ratio")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "per-group keep ratio")
    if names:
        ax.legend(fontsize=8, ncol=len(names))
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110)
    plt.close(fig)
    return prefix + ".json", prefix + ".png"


def save_learning_curve(prefix: str, curves: Mapping[str, Sequence[dict]], title: str = "") -> tuple[str, str]:
    """Write ``prefix.json`` ({label: curve}) and ``prefix.png``: reward per episode (dots)
    and best-so-far (line) for each labelled search."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(dict(curves), f)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (label, curve) in enumerate(curves.items()):
        ep = [c["episode"] for c in curve]
        color = f"C{i % 10}"
        ax.plot(ep, [c["reward"] for c in curve], ".", ms=2, color=color, alpha=0.5)
        ax.plot(ep, [c["best_reward"] for c in curve], "-", color=color, label=label)
    ax.set_xlabel("episode")
    ax.set_ylabel("reward = -CE on the reward split")
    ax.set_title(title or "R-SPAR learning curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110)
    plt.close(fig)
    return prefix + ".json", prefix + ".png"
