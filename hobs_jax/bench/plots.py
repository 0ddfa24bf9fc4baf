"""The suite's figures (matplotlib, Agg): one panel per model, one line per runtime
configuration (runtime, device, dtype) over the batch sizes.

- ``latency.png``: p50 latency vs batch (log-log), the p95 as a shaded band;
- ``throughput.png``: examples per second vs batch (throughput scaling);
- ``memory.png``: peak-RSS increase of the configuration (and the runtime's own memory
  statistic, dashed, where it has one) vs batch;
- ``compile.png``: compile / session-creation time vs batch.
"""

from __future__ import annotations

import os

FIGURES = ("latency", "throughput", "memory", "compile")


def _series(rows):
    """model -> {(runtime, device, dtype): [rows sorted by batch]} of the timed rows."""
    out: dict[str, dict[tuple, list]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        out.setdefault(r["model"], {}).setdefault((r["runtime"], r["device"], r["dtype"]), []).append(r)
    for by_cfg in out.values():
        for lst in by_cfg.values():
            lst.sort(key=lambda r: r["batch"])
    return out


def _label(cfg) -> str:
    from hobs_jax.bench.report import TITLES

    runtime, device, dtype = cfg
    return f"{TITLES.get(runtime, runtime)} {device}" + ("" if dtype == "float32" else f" {dtype}")


def plot_all(rows, out_dir: str) -> dict[str, str]:
    """Write the four figures into ``out_dir``; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    series = _series(rows)
    models = list(series)
    paths = {}
    for fig_name in FIGURES:
        fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
        for ax, model in zip(axes[0], models):
            for cfg, lst in series[model].items():
                b = [r["batch"] for r in lst]
                if fig_name == "latency":
                    line, = ax.plot(b, [r["p50_ms"] for r in lst], "o-", label=_label(cfg))
                    ax.fill_between(b, [r["p50_ms"] for r in lst], [r["p95_ms"] for r in lst],
                                    color=line.get_color(), alpha=0.15)
                    ax.set_ylabel("p50 latency (ms), band to p95")
                    ax.set_yscale("log")
                elif fig_name == "throughput":
                    ax.plot(b, [r["throughput_ips"] for r in lst], "o-", label=_label(cfg))
                    ax.set_ylabel("throughput (examples/s)")
                elif fig_name == "memory":
                    line, = ax.plot(b, [r["rss_delta_mb"] if r["rss_delta_mb"] is not None else float("nan")
                                        for r in lst], "o-", label=_label(cfg) + " RSS")
                    if any(r["runtime_mem_mb"] is not None for r in lst):
                        ax.plot(b, [r["runtime_mem_mb"] if r["runtime_mem_mb"] is not None else float("nan")
                                    for r in lst], "s--", color=line.get_color(), label=_label(cfg) + " runtime")
                    ax.set_ylabel("memory (MB)")
                else:
                    ax.plot(b, [r["compile_s"] for r in lst], "o-", label=_label(cfg))
                    ax.set_ylabel("compile / session creation (s)")
            ax.set_xscale("log", base=2)
            batches = sorted({r["batch"] for lst in series[model].values() for r in lst})
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("batch")
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths[fig_name] = os.path.join(out_dir, f"{fig_name}.png")
        fig.savefig(paths[fig_name], dpi=110)
        plt.close(fig)
    return paths
