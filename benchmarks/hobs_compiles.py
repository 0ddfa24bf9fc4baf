"""Where a first H-OBS call spends its XLA compile time (issue 6, point 7: the cold run).

    PYTHONPATH=. python benchmarks/hobs_compiles.py                 # default refit (propagate=1)
    PYTHONPATH=. python benchmarks/hobs_compiles.py --propagate 0

Runs H-OBS once, in a fresh process with no compilation cache, on the trained Fashion-MNIST
ResNet-56 (2048 calibration images, half the MACs, then BN re-estimation: the
``benchmarks/hobs_cost.py`` resnet56 case) with ``jax_log_compiles`` on, and sums JAX's
own "Finished XLA compilation of NAME in S sec" log records by H-OBS phase and by jitted
function name (the phase from the OBS engine's public timing hook, ``hobs_jax.obs.listen``).
The sum is the backend compile time only (tracing and lowering are not
in it), and logging every compile slows the run itself a little, so the phase times here
are not the recorded cost figures (those come from hobs_cost.py).

Writes docs/results/hobs_compiles.json and .md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import sys
import time

OUT = "docs/results/hobs_compiles"
OTHER = "other (untimed steps in the method, surgery, finite check)"
_RECORD = re.compile(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec")


class CompileLog(logging.Handler):
    """Collects (phase, jitted name, seconds) from JAX's compile log records; also a
    timing-hook listener (``hobs_jax.obs.PhaseListener``) that keeps the current H-OBS
    phase (phases may nest: a stack)."""

    def __init__(self):
        super().__init__()
        self.phase = "setup"
        self.stack: list[str] = []
        self.records: list[tuple[str, str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = _RECORD.match(record.getMessage())
        if m:
            self.records.append((self.phase, m.group(1), float(m.group(2))))

    def enter(self, phase, facts) -> None:
        self.stack.append(self.phase)
        self.phase = phase

    def exit(self, phase, wall, cpu, facts) -> None:
        self.phase = self.stack.pop() if self.stack else OTHER


def measure(checkpoint: str, propagate: int, calib: int) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_log_compiles", True)
    log = CompileLog()
    root = logging.getLogger("jax")
    root.addHandler(log)
    root.setLevel(logging.WARNING)
    root.propagate = False  # collected, not printed

    import hobs_jax
    from hobs_jax import obs
    from hobs_jax.data import get_source
    from hobs_jax.methods import Calibration, make_task, run
    from hobs_jax.stats import reestimate_bn

    model, variables, meta = hobs_jax.load(checkpoint)
    src = get_source("fashion_mnist")
    idx = np.sort(np.random.default_rng(0).permutation(src.size("train"))[:calib])
    x, y = src.batch("train", idx, train=False)
    x = np.asarray(x, np.float32)
    t0 = time.perf_counter()
    log.phase = "setup"
    task = make_task("hobs", meta["model"], variables, target=0.5, calib=Calibration(x, np.asarray(y)),
                     options=dict(progress=False, propagate=propagate))
    log.phase = OTHER
    with obs.listen(log):
        res = run("hobs", task)
    log.phase = "bn_reestimation"
    reestimate_bn(res.model, res.variables, [x[i:i + 256] for i in range(0, len(x), 256)])
    total = time.perf_counter() - t0
    by_phase: dict = collections.defaultdict(lambda: [0, 0.0])
    by_name: dict = collections.defaultdict(lambda: [0, 0.0])
    for phase, name, s in log.records:
        by_phase[phase][0] += 1
        by_phase[phase][1] += s
        by_name[(phase, name)][0] += 1
        by_name[(phase, name)][1] += s
    return {"checkpoint": checkpoint, "propagate": propagate, "calibration_images": calib,
            "wall_s_with_logging": round(total, 2),
            "compile_s": round(sum(s for _, _, s in log.records), 2), "compiles": len(log.records),
            "by_phase": {k: {"compiles": n, "seconds": round(s, 2)}
                         for k, (n, s) in sorted(by_phase.items(), key=lambda kv: -kv[1][1])},
            "by_function": [{"phase": p, "function": f, "compiles": n, "seconds": round(s, 2)}
                            for (p, f), (n, s) in sorted(by_name.items(), key=lambda kv: -kv[1][1])]}


def _markdown(r: dict, device: str, command: str) -> str:
    lines = ["# XLA compile time of a first H-OBS call", "",
             f"Produced by `{command}` on {device}: one H-OBS call (propagate={r['propagate']}) plus BN "
             f"re-estimation on the Fashion-MNIST ResNet-56, {r['calibration_images']} calibration images, "
             "half the MACs, in a fresh process with no compilation cache. Seconds are JAX's own "
             "\"Finished XLA compilation\" records (backend compile only; tracing and lowering not included).", "",
             f"Total: {r['compiles']} compilations, **{r['compile_s']:.1f} s** of XLA compile time in a "
             f"{r['wall_s_with_logging']:.1f} s run (wall, with compile logging on).", "",
             "| phase | compilations | seconds |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['compiles']} | {v['seconds']:.2f} |" for k, v in r["by_phase"].items()]
    lines += ["", "Largest by jitted function:", "", "| phase | function | compilations | seconds |",
              "|---|---|---:|---:|"]
    lines += [f"| {f['phase']} | `{f['function']}` | {f['compiles']} | {f['seconds']:.2f} |"
              for f in r["by_function"][:12]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--propagate", type=int, default=1, help="H-OBS refit sweeps (the method's default: 1)")
    p.add_argument("--calib", type=int, default=2048, help="calibration images")
    p.add_argument("--out", default=OUT, help="output path without extension")
    a = p.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        raise SystemExit("error: JAX_COMPILATION_CACHE_DIR is set; unset it so that every compile is a real one")
    if a.propagate < 0 or a.calib < 1:
        raise SystemExit(f"error: --propagate must be >= 0 and --calib >= 1, got {a.propagate} and {a.calib}")
    from benchmarks.hobs_cost import cpu_description

    r = measure(a.checkpoint, a.propagate, a.calib)
    device = cpu_description()
    command = " ".join(["PYTHONPATH=. python benchmarks/hobs_compiles.py"] + sys.argv[1:])
    r.update(device=device, command=command)
    md = _markdown(r, device, command)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
