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
    p.add_argument("--from", dest="from_json", default="",
                   help="re-analyse the staircases of an earlier run's JSON (no measuring; its command, "
                        "machine and threads are kept)")
    args = p.parse_args(argv)

    from hobs_jax.allocation import alignment
    from hobs_jax.bench import sysinfo

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
        args = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
        command = "python " + " ".join(shlex.quote(a) for a in args)
    quanta = {r: alignment.combined_quantum([s for s in stairs if s.runtime == r]) for r in runtimes}
    doc = {"command": command, "machine": machine, "threads": threads, "device_class": stairs[0].device,
           "quantum": quanta, "staircases": [dict(s.to_dict(), width_bound=alignment.width_bound(s)) for s in stairs]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    _plot(stairs, args.out + ".png")
    lines = ["# Width staircases", "", f"`{command}` on {sysinfo.describe(machine)} "
             f"(device class `{stairs[0].device}`), {machine['date']}, {threads or 'all'} thread(s) per "
             "runtime; the machine was shared with other jobs.",
             "", "Latency (minimum over rounds of each round's median, ms) of one layer over its output "
             "width; the quantum is where the latency steps (`alignment.pick_quantum`); width-bound: the "
             "widest width takes at least twice the narrowest (only those vote for the runtime's quantum).", "",
             "| runtime | layer | width-bound | quantum | ms at w = 7, 8, 9, 15, 16, 17, 31, 32, 33 |",
             "|---|---|---|---:|---|"]
    if args.from_json:
        lines[4:4] = [f"Re-analysed from that run's JSON with `python benchmarks/alignment_staircase.py "
                      f"--from {args.from_json} --out {args.out}` (the current `pick_quantum` and "
                      "`combined_quantum`).", ""]
    probe = (7, 8, 9, 15, 16, 17, 31, 32, 33)
    for s in stairs:
        at = dict(zip(s.widths, s.ms))
        lines.append(f"| {s.runtime} | {s.layer.name()} | {'yes' if alignment.width_bound(s) else 'no'} | "
                     f"{s.to_dict()['quantum']} | "
                     + ", ".join(f"{at[w]:.3f}" for w in probe if w in at) + " |")
    lines += ["", "Quantum per runtime (the largest dividing the quanta of most width-bound layers, "
              "`alignment.combined_quantum`): "
              + ", ".join(f"{r} {q}" for r, q in quanta.items()) + f". Plot: `{os.path.basename(args.out)}.png`.", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"cached: {cached}")


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
