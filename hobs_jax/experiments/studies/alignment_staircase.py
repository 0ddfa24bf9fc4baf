"""Latency staircases of representative layers over output widths, per runtime, and the
width quantum each implies (``hobs_jax.allocation.alignment``).

Every runtime runs in a fresh process pinned to ``--threads`` cores (default 1); in each,
every layer is timed at every output width (interleaved over ``--rounds``, minimum of the
round medians). The quantum per
staircase and per runtime (least common multiple over the layers) is printed, written to
``--out``.json/.md/.png and cached for this device (``alignment.cached_quantum``).

    python benchmarks/alignment_staircase.py          # ResNet-20 on 28x28: 14x14 stage, batch 1 and 64
    python benchmarks/alignment_staircase.py --runtimes xla --layers conv3x3 --batches 1 \\
        --max-width 24 --rounds 2 --out /tmp/stairs                       # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from hobs_jax.experiments import studies
from hobs_jax.experiments.table import Column, ResultTable

NAME = "alignment"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtimes", default="xla,onnxruntime")
    p.add_argument("--layers", default="conv3x3,conv1x1,dense")
    p.add_argument("--cin", type=int, default=32, help="input channels of the layer")
    p.add_argument("--spatial", type=int, default=14, help="feature-map side (ResNet-20's middle stage on 28x28)")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--max-width", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="cores per runtime (1: clean staircases on a shared "
                                                             "machine; 0: all)")
    p.add_argument("--out", default="docs/results/alignment")
    p.add_argument("--render-only", action="store_true",
                   help="rebuild the table from the stored run record (OUT's folder/records/NAME.json), no measuring")
    p.add_argument("--from", dest="from_json", default="",
                   help="re-analyse the staircases of an earlier run's JSON (no measuring; its command, "
                        "machine and threads are kept)")
    args = p.parse_args(argv)

    from hobs_jax.allocation import alignment
    from hobs_jax.bench import sysinfo

    if args.render_only:
        for path in studies.render_prefix(sys.modules[__name__], args.out):
            print(path)
        return
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        stairs = [alignment.Staircase.from_dict(d) for d in old["staircases"]]
        machine, command, threads = old["machine"], old["command"], old.get("threads", args.threads)
        runtimes = list(dict.fromkeys(s.runtime for s in stairs))
        cached = "(not cached: re-analysed)"
    else:
        layers = [alignment.Layer(k, args.cin, args.spatial, int(b))
                  for b in args.batches.split(",") for k in args.layers.split(",")]
        widths = list(range(1, args.max_width + 1))
        runtimes = [r for r in args.runtimes.split(",") if r]
        machine, threads = sysinfo.machine(), args.threads
        stairs = alignment.measure_staircases(runtimes, layers, widths, rounds=args.rounds, iters=args.iters,
                                              threads=threads)
        cached = alignment.save_staircases(stairs, alignment.device_id())
        words = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)  # not `args`: still read below
        command = "python " + " ".join(shlex.quote(a) for a in words)
    quanta = {r: alignment.combined_quantum([s for s in stairs if s.runtime == r]) for r in runtimes}
    doc = {"command": command, "machine": machine, "threads": threads, "device_class": stairs[0].device,
           "quantum": quanta, "staircases": [dict(s.to_dict(), width_bound=alignment.width_bound(s)) for s in stairs]}
    if args.from_json:
        doc["reanalysed"] = (f"python benchmarks/alignment_staircase.py --from {args.from_json} --out {args.out}")
    out_dir, name = os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out)
    studies.save_record(name, doc, out_dir)
    _plot(stairs, args.out + ".png")
    rows, sources = from_legacy(doc)
    t = table(rows, sources, name=name)
    t.write(args.out)
    print(t.to_markdown())
    print(f"cached: {cached}")


PROBE = (7, 8, 9, 15, 16, 17, 31, 32, 33)


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """Rows (one per staircase) and the source of the run record the script writes
    (``docs/results/records/alignment.json``: command, machine, threads, staircases)."""
    from hobs_jax.allocation import alignment
    from hobs_jax.experiments import machine as machine_mod

    m = doc["machine"]
    key = f"alignment@{m['date'][:10]}"
    rows = []
    for d in doc["staircases"]:
        s = alignment.Staircase.from_dict(d)
        at = dict(zip(s.widths, s.ms))
        rows.append({"runtime": s.runtime, "layer": s.layer.name(), "width_bound": "yes" if d["width_bound"] else "no",
                     "quantum": d["quantum"], "ms_at": ", ".join(f"{at[w]:.3f}" for w in PROBE if w in at),
                     "device": machine_mod.device_key(m), "device_class": s.device, "source": key})
    src = {"command": doc["command"], "date": m["date"], "machine": machine_mod.describe(m),
           "threads": doc["threads"], "device_class": doc["device_class"], "quantum": doc["quantum"]}
    if doc.get("reanalysed"):
        src["reanalysed"] = doc["reanalysed"]
    return rows, {key: src}


def table(rows, sources, name: str = NAME) -> ResultTable:
    """The staircases' quanta and latencies at widths around multiples of 8 (one row per
    runtime and layer); the quantum per runtime in the notes."""
    t = ResultTable(name, "Width staircases",
                    [Column("runtime", "runtime"), Column("layer", "layer"), Column("width_bound", "width-bound"),
                     Column("quantum", "quantum", "int"),
                     Column("ms_at", "ms at w = " + ", ".join(str(w) for w in PROBE))],
                    context=("device",), iso_tolerance=None, description=[
                        "Latency (minimum over rounds of each round's median, ms) of one layer over its output "
                        "width; the quantum is where the latency steps (`alignment.pick_quantum`); width-bound: "
                        "the widest width takes at least twice the narrowest (only those vote for the runtime's "
                        "quantum). Each runtime ran in its own process on the stated threads; the machine was "
                        "shared with other jobs."])
    t.extend(rows)
    for info in sources.values():
        if info.get("reanalysed"):
            t.note(f"Re-analysed from the run's JSON with `{info['reanalysed']}` (the current `pick_quantum` "
                   "and `combined_quantum`).")
    for info in sources.values():
        if info.get("quantum"):
            t.note("Quantum per runtime (the largest dividing the quanta of most width-bound layers, "
                   "`alignment.combined_quantum`): " + ", ".join(f"{r} {q}" for r, q in info["quantum"].items())
                   + f". Plot: `{t.name}.png`.")
    t.add_sources(sources)
    return t


def _plot(stairs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = list(dict.fromkeys(s.runtime for s in stairs))
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6 * len(runtimes), 4.2), squeeze=False)
    for ax, runtime in zip(axes[0], runtimes):
        for s in stairs:
            if s.runtime != runtime:
                continue
            base = s.ms[-1]
            ax.plot(s.widths, [t / base for t in s.ms], ".-", label=f"{s.layer.name()} (q={s.to_dict()['quantum']})")
        for x in range(8, max(s.widths[-1] for s in stairs) + 1, 8):
            ax.axvline(x, color="grey", alpha=0.25, lw=0.8)
        ax.set_title(runtime)
        ax.set_xlabel("output width w")
        ax.set_ylabel("latency / latency at the widest w")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
