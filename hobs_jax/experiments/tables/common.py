"""What the plan's tables share: column sets, the accuracy a row is judged by, means and
the paired test over seeds, and the fine-tuning curve figure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hobs_jax.experiments.table import Column, ResultTable

ACC: dict[str, Any] = dict(kind="pct", digits=2)  # Column keywords, splatted


def oneshot_acc(row: Mapping) -> float | None:
    """Top-1 of the network the prune stage hands on: after BN re-estimation when it ran,
    else right after pruning."""
    v = row.get("acc_bn_recalibrated")
    return v if v is not None else row.get("acc_oneshot")


def final_acc(row: Mapping) -> float | None:
    """Top-1 after the longest fine-tuning budget, else :func:`oneshot_acc`."""
    v = row.get("acc_finetuned")
    return v if v is not None else oneshot_acc(row)


def steps_of(rows: Iterable[Mapping]) -> list[str]:
    """Every fine-tuning budget the rows were evaluated at, ascending."""
    return sorted({s for r in rows for s in (r.get("acc_by_steps") or {})}, key=int)


def curve_columns(steps: Sequence[str]) -> list[Column]:
    return [Column(f"ft_{s}", f"+{s} steps", **ACC) for s in steps]


def with_curve(row: Mapping, steps: Sequence[str]) -> dict:
    out = dict(row)
    for s in steps:
        out[f"ft_{s}"] = (row.get("acc_by_steps") or {}).get(s)
    return out


def speedup(row: Mapping, batch: int) -> float | None:
    return (row.get("latency_speedup") or {}).get(f"batch{batch}")


def mean_std(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the values present (std None below two)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}


def paired_test(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Paired t-test (``scipy.stats.ttest_rel``) of two methods over the seeds both have:
    mean difference a - b, t, two-sided p, n. With fewer than two common seeds, or identical
    differences, p is None and ``why`` says so."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    out = {"seeds": seeds, "n": len(seeds), "mean_diff": statistics.fmean(diffs) if diffs else None,
           "t": None, "p": None, "why": ""}
    if len(seeds) < 2:
        out["why"] = f"{len(seeds)} common seed(s): a paired test needs two or more"
        return out
    if max(diffs) == min(diffs):
        out["why"] = "every seed gives the same difference: t is undefined"
        return out
    from scipy import stats

    t, p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    out["t"], out["p"] = float(t), float(p) if math.isfinite(p) else None
    return out


def plot_curves(table: ResultTable, path: str, *, title: str = "") -> str:
    """Top-1 against fine-tuning steps (0 = the one-shot network) per row with a curve, one
    panel per group of ``table``; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(v, [r for r in rows if r.get("acc_by_steps")]) for v, rows in table.groups()]
    groups = [(v, rows) for v, rows in groups if rows]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.6), squeeze=False)
    for ax, (values, rows) in zip(axes[0], groups):
        for i, r in enumerate(rows):
            pts = [(0, oneshot_acc(r))] + [(int(s), a) for s, a in sorted(r["acc_by_steps"].items(),
                                                                          key=lambda kv: int(kv[0]))]
            pts = [(s, 100 * a) for s, a in pts if a is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=f"C{i % 10}",
                    label=r.get("label"))
        ax.set_title(", ".join(f"{k} {v}" for k, v in zip(table.group_by, values)), fontsize=9)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=6)
    fig.suptitle(title or table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
