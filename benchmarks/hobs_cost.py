"""Cost of one H-OBS run (issue 6, point 7): wall time per phase and peak memory.

    PYTHONPATH=. python benchmarks/hobs_cost.py                      # all cases below
    PYTHONPATH=. python benchmarks/hobs_cost.py --cases resnet56     # one case

Cases (each runs in its own subprocess, so its peak RSS is its own):

* ``resnet56``: the trained Fashion-MNIST ResNet-56 (``checkpoints/resnet56_fmnist``;
  ``--checkpoint`` to change), 2048 calibration images from the training split, H-OBS
  with its default options (global allocation) to half the MACs. Goal: <= 30 s on the
  2-core CPU. H-OBS runs twice in the process: the first call includes XLA compilation
  of the calibration step ("cold", what a user pays once), the second does not ("warm").
  ``--propagate`` sets the sequential refit (default 0 here). A second process then runs
  H-OBS once more with the persistent compilation cache the first one filled
  (``hobs_jax.compile_cache``, what ``python -m hobs_jax.main`` turns on): "new process,
  cache populated", what a later run of the same model pays (tracing, no XLA compiles).
* ``resnet56-refit``: the same with the method's default refit (``propagate=1``: one
  more pass of 512 images through the pruned and dense networks, timed as
  ``propagation``).
* ``resnet50``: ResNet-50 (torchvision layout, 10 classes) at 224x224, 256 calibration
  images = Fashion-MNIST resized to 224 and replicated to 3 channels; random weights whose
  BatchNorm statistics are first estimated on those images (not timed), so activations
  have trained-network scale. H-OBS defaults except ``calib_batch_size`` (32: a 256-image
  batch of 224x224 im2col patches would need several GB per layer), to half the MACs.
  Goal: <= 15 min.

Phases (wall seconds, and process CPU seconds summed over threads, which depend much
less on what else runs on the shared CPU; on an idle 2-core machine a phase's wall time
lies between CPU/2 and CPU; both through the OBS engine's public timing hook,
``hobs_jax.obs.listen``, which also gives the selection time of every group): ``setup`` (graph,
cost model, layer trace; part of ``prune`` outside the method),
``calibration``, ``inverses``, ``selection``, ``compensation`` (from H-OBS's
``outcome.info['timings']``; ``propagation`` = the refit), ``surgery_check`` (cutting the network, counting MACs,
the finite-output check: the rest of ``hobs_jax.methods.prune``), ``bn_reestimation``
(``hobs_jax.stats.reestimate_bn`` over the calibration images). Peak memory is the
process's ``ru_maxrss`` after each phase (it includes JAX/XLA and the dataset). The load
average (``os.getloadavg``) at the start and end says how shared the CPU was.

Writes docs/results/hobs_cost.json and .md (merging with cases already there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

OUT = "docs/results/hobs_cost"
GOALS = {"resnet56": 30.0, "resnet56-refit": 30.0, "resnet50": 900.0}


def cpu_description() -> str:
    """CPU model, core count and widest vector ISA (the cloud VMs report every EPYC
    generation as "AMD EPYC"; AVX2 and AVX-512 ones time differently)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return ", ".join(x for x in (name or platform.machine(), f"{os.cpu_count()} cores", isa) if x)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _accuracy(model, variables, x, y, bs: int = 500) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np

    f = jax.jit(lambda v, a: jnp.argmax(model.apply(v, a, train=False), -1))
    hits = sum(int(np.sum(np.asarray(f(variables, jnp.asarray(x[i:i + bs]))) == y[i:i + bs]))
               for i in range(0, len(x), bs))
    return hits / len(x)


class PhaseRecorder:
    """A timing-hook listener (``hobs_jax.obs.PhaseListener``): process CPU seconds per
    phase (all threads: on a shared machine wall time depends on the other jobs, CPU time
    much less) and the wall and CPU time of every group's selection, with its facts."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.groups: list[dict] = []

    def enter(self, phase, facts) -> None:
        pass

    def exit(self, phase, wall, cpu, facts) -> None:
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu
        if phase == "selection" and facts:
            self.groups.append({"group": facts["group"], "size": facts["size"], "removed_on_path": facts["removed"],
                                "consumers": facts["consumers"], "max_d": facts["max_d"],
                                "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})


def _one_run(name, model_name, variables, images, labels, opts, batches) -> dict:
    """One H-OBS prune + BN re-estimation, timed by phase (wall and process CPU seconds)."""
    from hobs_jax import obs
    from hobs_jax.methods import Calibration, make_task, run
    from hobs_jax.stats import reestimate_bn

    rec = {"load_start": _load()}
    t0, c0 = time.perf_counter(), time.process_time()
    task = make_task("hobs", model_name, variables, target=0.5, calib=Calibration(images, labels),
                     options=opts)
    t_task, c_task = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    with obs.listen(PhaseRecorder()) as phases:
        res = run("hobs", task)
    t_run, c_run = time.perf_counter() - t1, time.process_time() - c1
    timings = dict(res.outcome.info["timings"])
    cpu = dict(phases.cpu)
    rss = {"after_prune": round(_rss_mib(), 1)}
    t2, c2 = time.perf_counter(), time.process_time()
    pv = reestimate_bn(res.model, res.variables, batches)
    t_bn, c_bn = time.perf_counter() - t2, time.process_time() - c2
    rss["after_bn"] = round(_rss_mib(), 1)
    phases_s = {"setup": t_task, **timings, "surgery_check": t_run - sum(timings.values()), "bn_reestimation": t_bn}
    cpus = {"setup": c_task, **cpu, "surgery_check": c_run - sum(cpu.values()), "bn_reestimation": c_bn}
    rec.update({
        "phases_s": {k: round(v, 2) for k, v in phases_s.items()},
        "phases_cpu_s": {k: round(v, 2) for k, v in cpus.items()},
        "total_s": round(t_task + t_run + t_bn, 2),
        "total_cpu_s": round(c_task + c_run + c_bn, 2),
        "macs_ratio": round(res.macs_ratio, 4), "params_ratio": round(res.params_ratio, 4),
        "peak_rss_mib": rss, "load_end": _load(),
        "damping_raised": res.outcome.info.get("damping_raised", {}),
        "selection_by_group": sorted(phases.groups, key=lambda g: -g["cpu_s"]),
    })
    return rec, res, pv


def case_resnet56(args) -> dict:
    import numpy as np

    import hobs_jax
    from hobs_jax.data import get_source

    t0 = time.perf_counter()
    model, variables, meta = hobs_jax.load(args.checkpoint)
    src = get_source("fashion_mnist")
    n = args.calib or 2048
    idx = np.sort(np.random.default_rng(0).permutation(src.size("train"))[:n])
    x, y = src.batch("train", idx, train=False)
    x = np.asarray(x, np.float32)
    tx, ty = src.batch("test", np.arange(2000), train=False)
    load_s = time.perf_counter() - t0
    opts = dict(progress=False, propagate=args.propagate)
    batches = [x[i:i + 256] for i in range(0, len(x), 256)]
    runs = []
    for i in range(1 if args.cached_run else 2):
        rec, res, pv = _one_run("resnet56", meta["model"], variables, x, np.asarray(y), opts, batches)
        rec["run"] = ("new process, cache populated" if args.cached_run else
                      "cold (includes XLA compilation)" if i == 0 else "warm (same process, compiled)")
        runs.append(rec)
    if args.cached_run:
        return {"runs": runs}
    acc = {"dense": _accuracy(model, variables, tx, ty), "hobs": _accuracy(res.model, res.variables, tx, ty),
           "hobs_bn": _accuracy(res.model, pv, tx, ty)}
    return {"case": "resnet56", "model": meta["model"], "checkpoint": args.checkpoint,
            "input": "28x28x1 Fashion-MNIST", "calibration_images": len(x), "target_macs": 0.5,
            "options": "hobs defaults (global allocation, damp 0.01, 1 channel per step, float32), "
                       f"propagate {args.propagate}",
            "load_s": round(load_s, 2), "runs": runs,
            "test_acc_first_2000": {k: round(v, 4) for k, v in acc.items()},
            "goal_s": GOALS["resnet56"]}


def case_resnet50(args) -> dict:
    import jax
    import numpy as np

    from hobs_jax import models
    from hobs_jax.data import get_source
    from hobs_jax.stats import reestimate_bn

    t0 = time.perf_counter()
    size = args.size
    src = get_source("fashion_mnist", resize_to=(size, size), channels=3)
    n = args.calib or 256
    idx = np.sort(np.random.default_rng(0).permutation(src.size("train"))[:n])
    x, y = src.batch("train", idx, train=False)
    x = np.asarray(x, np.float32)
    model = models.build("resnet50", num_classes=10, in_channels=3)
    variables = models.random_variables(model, (1, size, size, 3), seed=0)
    batches = [x[i:i + 32] for i in range(0, len(x), 32)]
    variables = jax.device_get(reestimate_bn(model, variables, batches))
    load_s = time.perf_counter() - t0
    opts = dict(progress=False, calib_batch_size=32, propagate=args.propagate)
    rec, res, _ = _one_run("resnet50", "resnet50", variables, x, np.asarray(y), opts, batches)
    rec["run"] = "cold (includes XLA compilation)"
    return {"case": "resnet50", "model": "resnet50", "checkpoint": None,
            "input": f"{size}x{size}x3 (Fashion-MNIST resized, grey replicated)",
            "weights": "random, BN statistics estimated on the calibration images (not timed)",
            "calibration_images": len(x), "target_macs": 0.5,
            "options": "hobs defaults (global allocation, damp 0.01, 1 channel per step, float32), "
                       f"calib_batch_size 32, propagate {args.propagate}",
            "load_s": round(load_s, 2), "runs": [rec], "goal_s": GOALS["resnet50"]}


def case_resnet56_refit(args) -> dict:
    """resnet56 with the method's default sequential refit (propagate=1)."""
    args.propagate = 1
    return dict(case_resnet56(args), case="resnet56-refit")


CASES = {"resnet56": case_resnet56, "resnet56-refit": case_resnet56_refit, "resnet50": case_resnet50}


def _markdown(results: dict, device: str) -> str:
    lines = ["# H-OBS cost per phase", "",
             "Produced by `PYTHONPATH=. python benchmarks/hobs_cost.py` (each case in its own process; "
             "`--cases NAME` reruns one). Wall seconds on a shared CPU: the load average at the start "
             "and end of each run is listed, because other jobs share the cores.", "",
             f"Device: {device}.", ""]
    cols = ["setup", "calibration", "inverses", "selection", "compensation", "propagation", "surgery_check",
            "bn_reestimation"]
    for name, r in results.items():
        lines += [f"## {name}: {r['model']}, {r['input']}, {r['calibration_images']} calibration images, "
                  f"target {r['target_macs']} of the MACs", "",
                  f"Options: {r['options']}." + (f" Weights: {r['weights']}." if r.get("weights") else "")
                  + f" Goal: total <= {r['goal_s']:.0f} s.", "",
                  "| run | " + " | ".join(cols) + " | total | MACs kept | peak RSS MiB | load (1 min) start -> end |",
                  "|---" * (len(cols) + 5) + "|"]
        for run in r["runs"]:
            p, pc = run["phases_s"], run.get("phases_cpu_s", {})
            lines.append(f"| {run['run']}, wall s | " + " | ".join(f"{p.get(c, 0):.1f}" for c in cols)
                         + f" | **{run['total_s']:.1f}** | {run['macs_ratio']:.3f} | "
                         f"{run['peak_rss_mib']['after_bn']:.0f} | {run['load_start'][0]} -> {run['load_end'][0]} |")
            if pc:
                lines.append(f"| {run['run']}, CPU s | " + " | ".join(f"{pc.get(c, 0):.1f}" for c in cols)
                             + f" | **{run['total_cpu_s']:.1f}** | | | |")
        top = r["runs"][-1].get("selection_by_group", [])[:5]
        if top:
            lines += ["", "Selection time by group (largest CPU first): " + "; ".join(
                f"g{g['group']} ({g['size']} ch, {g['removed_on_path']} removed on the path, {g['consumers']} "
                f"consumers, d <= {g['max_d']}) {g['cpu_s']:.1f} s" for g in top) + "."]
        if "test_acc_first_2000" in r:
            a = r["test_acc_first_2000"]
            lines += ["", f"Sanity (first 2000 test images): dense {a['dense']:.4f}, H-OBS one-shot "
                          f"{a['hobs']:.4f}, after BN re-estimation {a['hobs_bn']:.4f}."]
        if r.get("command"):
            lines += ["", f"Command: `{r['command']}`"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="resnet56,resnet50")
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--calib", type=int, default=0, help="calibration images (0: the case's default)")
    p.add_argument("--size", type=int, default=224, help="ResNet-50 input size")
    p.add_argument("--propagate", type=int, default=0,
                   help="H-OBS sequential refit sweeps (recorded runs: 0; the method's default is 1 "
                        "and adds one forward pass of 512 images through the dense and the pruned network)")
    p.add_argument("--out", default=OUT, help="output path without extension")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--compile-cache", default="", help=argparse.SUPPRESS)
    p.add_argument("--cached-run", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        if a.compile_cache:
            from hobs_jax import compile_cache

            compile_cache.enable(a.compile_cache)
        print("RESULT " + json.dumps(CASES[a.child](a)))
        return
    names = [c for c in a.cases.split(",") if c]
    bad = [c for c in names if c not in CASES]
    if bad:
        raise SystemExit(f"error: unknown case {bad[0]!r}; use {sorted(CASES)}")
    path = a.out + ".json"
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f).get("cases", {})
    device = cpu_description()
    def child(name, *extra):
        argv = [sys.executable, __file__, "--child", name, "--checkpoint", a.checkpoint, "--calib", str(a.calib),
                "--size", str(a.size), "--propagate", str(a.propagate), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")
               and k != "JAX_COMPILATION_CACHE_DIR"}  # cold means cold
        proc = subprocess.run(argv, capture_output=True, text=True, env=dict(env, PYTHONPATH="."))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"error: case {name} failed (exit {proc.returncode})")
        return json.loads(lines[-1][len("RESULT "):])

    for name in names:
        with tempfile.TemporaryDirectory(prefix="hobs_cost_xla_") as cache:
            r = child(name, "--compile-cache", cache)  # an empty cache: cold is cold
            if name.startswith("resnet56"):
                r["runs"] += child(name, "--compile-cache", cache, "--cached-run")["runs"]
        r["device"] = device
        r["command"] = " ".join(["PYTHONPATH=. python benchmarks/hobs_cost.py"] + sys.argv[1:])
        data[name] = r
        for run in r["runs"]:
            print(f"{name} {run['run']}: wall {run['total_s']} s {run['phases_s']}; "
                  f"CPU {run['total_cpu_s']} s {run['phases_cpu_s']}", flush=True)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump({"device": device, "cases": data}, f, indent=1)
        with open(a.out + ".md", "w") as f:
            f.write(_markdown(data, device))


if __name__ == "__main__":
    main()
