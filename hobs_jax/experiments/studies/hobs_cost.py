"""What one H-OBS run costs: wall and process-CPU seconds per phase and peak memory
(``measure``), the XLA compile time of a first call by phase and jitted function
(``compiles``), and the parts of the sequential refit (``refit_parts``).

Cases (each in its own process, so that peak memory and a cold compile are its own):
``resnet56`` the trained Fashion-MNIST ResNet-56, 2048 calibration images (the pipeline's
sample), H-OBS defaults (global allocation) to half the MACs with ``propagate`` refit
sweeps (0 here), run twice in the process ("cold" with XLA compilation, then "warm"), then
once more in a new process with the persistent compilation cache the first one filled;
``resnet56-refit`` the same with the default refit (``propagate=1``); ``resnet50`` at
224x224, 256 images (Fashion-MNIST resized, grey replicated), random weights with BN
statistics estimated on them first (not timed), ``calib_batch_size`` 32.

Phases come from the OBS engine's timing hook (:func:`hobs_jax.obs.listen`): ``setup``
(graph, cost model, trace), ``calibration``, ``inverses``, ``selection``,
``compensation``, ``propagation`` (the refit), ``surgery_check`` (cutting, counting, the
finite check), ``bn_reestimation``. Process CPU seconds depend far less on other jobs on a
shared CPU than wall seconds; the load average at the start and end is recorded."""

from __future__ import annotations

import resource
import time
from typing import Any

from hobs_jax.experiments import machine
from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hobs_cost", "benchmarks/hobs_cost.py"
GOALS = {"resnet56": 30.0, "resnet56-refit": 30.0, "resnet50": 900.0}
PHASES = ("setup", "calibration", "inverses", "selection", "compensation", "propagation", "surgery_check",
          "bn_reestimation")


class PhaseRecorder:
    """A timing-hook listener: process CPU seconds per phase and per group's selection."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.groups: list[dict] = []

    def enter(self, phase, facts) -> None:
        pass

    def exit(self, phase, wall, cpu, facts) -> None:
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu
        if phase == "selection" and facts:
            self.groups.append({"group": facts["group"], "size": facts["size"], "removed": facts["removed"],
                                "consumers": facts["consumers"], "max_d": facts["max_d"], "cpu_s": round(cpu, 3)})


def one_run(model_name: str, variables, calib, options: dict, bn_batch: int) -> tuple[dict, object]:
    """One H-OBS prune + BN re-estimation, wall and CPU seconds per phase."""
    from hobs_jax import obs
    from hobs_jax.methods import make_task, run
    from hobs_jax.stats import reestimate_bn

    rec: dict[str, Any] = {"load_start": machine.load_average()}
    t0, c0 = time.perf_counter(), time.process_time()
    task = make_task("hobs", model_name, variables, target=0.5, calib=calib, options=options)
    t_task, c_task = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    phases = PhaseRecorder()
    with obs.listen(phases):
        res = run("hobs", task)
    t_run, c_run = time.perf_counter() - t1, time.process_time() - c1
    timings = dict(res.outcome.info["timings"])
    rss_prune = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    x = calib.images
    t2, c2 = time.perf_counter(), time.process_time()
    reestimate_bn(res.model, res.variables, [x[i:i + bn_batch] for i in range(0, len(x), bn_batch)])
    t_bn, c_bn = time.perf_counter() - t2, time.process_time() - c2
    wall = {"setup": t_task, **timings, "surgery_check": t_run - sum(timings.values()), "bn_reestimation": t_bn}
    cpu = {"setup": c_task, **phases.cpu, "surgery_check": c_run - sum(phases.cpu.values()), "bn_reestimation": c_bn}
    rec.update({f"{k}_s": round(v, 2) for k, v in wall.items()})
    rec.update({f"{k}_cpu_s": round(v, 2) for k, v in cpu.items()})
    rec.update(total_s=round(t_task + t_run + t_bn, 2), total_cpu_s=round(c_task + c_run + c_bn, 2),
               macs_ratio=round(res.macs_ratio, 4), params_ratio=round(res.params_ratio, 4),
               peak_rss_mib=round(max(rss_prune, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0), 1),
               load_end=machine.load_average(), slowest_groups=sorted(phases.groups, key=lambda g: -g["cpu_s"])[:5])
    return rec, res


def case(name: str, checkpoint: str = "checkpoints/resnet56_fmnist", propagate: int = 0, calib: int = 0,
         size: int = 224, cached_run: bool = False, compile_cache: str = "") -> list[dict]:
    """The runs of one case in this process (module doc); used through :func:`measure`."""
    import jax

    from hobs_jax.experiments.studies import calibration

    if compile_cache:
        from hobs_jax import compile_cache as cc

        cc.enable(compile_cache)
    if name.startswith("resnet56"):
        import hobs_jax

        _, variables, meta = hobs_jax.load(checkpoint)
        model_name, c = meta["model"], calibration(calib or 2048)
        options, bn_batch = dict(progress=False, propagate=1 if name == "resnet56-refit" else propagate), 256
        labels = ["new process, cache populated"] if cached_run else ["cold (includes XLA compilation)",
                                                                      "warm (same process, compiled)"]
    else:
        from hobs_jax import models
        from hobs_jax.stats import reestimate_bn

        c = calibration(calib or 256, resize_to=(size, size), channels=3)
        model_name = "resnet50"
        model = models.build(model_name, num_classes=10, in_channels=3)
        variables = models.random_variables(model, (1, size, size, 3), seed=0)
        batches = [c.images[i:i + 32] for i in range(0, len(c.images), 32)]
        variables = jax.device_get(reestimate_bn(model, variables, batches))
        options, bn_batch, labels = dict(progress=False, calib_batch_size=32, propagate=propagate), 32, [
            "cold (includes XLA compilation)"]
    rows = []
    for label in labels:
        rec, _ = one_run(model_name, variables, c, options, bn_batch)
        rows.append(dict(rec, case=name, run=label, model=model_name, calibration_images=len(c.images),
                         propagate=options["propagate"], goal_s=GOALS[name]))
    return rows


def measure(cases=("resnet56", "resnet50"), checkpoint: str = "checkpoints/resnet56_fmnist", propagate: int = 0,
            calib: int = 0, size: int = 224, *, device: str, source: str) -> list[dict]:
    import tempfile

    from hobs_jax.experiments.isolate import call

    kw: dict[str, Any] = dict(checkpoint=checkpoint, propagate=propagate, calib=calib, size=size)
    drop = ("JAX_COMPILATION_CACHE_DIR",)  # cold means cold
    rows = []
    for name in cases:
        if name not in GOALS:
            raise ValueError(f"unknown case {name!r}; cases: {', '.join(GOALS)}")
        with tempfile.TemporaryDirectory(prefix="hobs_cost_xla_") as cache:
            rows += call(f"{__name__}:case", drop_env=drop, name=name, compile_cache=cache, **kw)
            if name.startswith("resnet56"):
                rows += call(f"{__name__}:case", drop_env=drop, name=name, compile_cache=cache, cached_run=True, **kw)
    return [dict(r, device=device, source=source) for r in rows]


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    isa = "avx512f" if "AVX-512" in d["device"] else "unrecorded"
    key = f"hobs_cost@legacy-{isa}"
    rows = []
    for name, c in d["cases"].items():
        for r in c["runs"]:
            row = {"case": name, "run": r["run"], "model": c["model"], "calibration_images": c["calibration_images"],
                   "propagate": 1 if name == "resnet56-refit" else 0, "goal_s": c["goal_s"],
                   "device": f"cpu:AMD EPYC:{isa}", "source": key, "load_start": r["load_start"],
                   "load_end": r["load_end"], "total_s": r["total_s"], "total_cpu_s": r.get("total_cpu_s"),
                   "macs_ratio": r["macs_ratio"], "peak_rss_mib": r["peak_rss_mib"]["after_bn"]}
            row.update({f"{k}_s": v for k, v in r["phases_s"].items()})
            row.update({f"{k}_cpu_s": v for k, v in r.get("phases_cpu_s", {}).items()})
            rows.append(row)
    commands = sorted({c.get("command", "").replace("", "") for c in d["cases"].values()})
    return rows, {key: {"command": "; ".join(commands), "machine": d["device"],
                        "note": "benchmarks/hobs_cost.py before the experiments package"}}


def table(rows, sources, name: str = NAME) -> ResultTable:
    cols = [Column("case", "case"), Column("run", "run")]
    cols += [Column(f"{p}_s", p, "float", 1) for p in PHASES]
    cols += [Column("total_s", "total wall s", "float", 1), Column("total_cpu_s", "total CPU s", "float", 1),
             Column("macs_ratio", "MACs kept", "ratio", 3), Column("peak_rss_mib", "peak RSS MiB", "float", 0),
             Column("load", "load (1 min) start -> end")]
    t = ResultTable(name, "H-OBS cost per phase", cols, context=("device",), iso_tolerance=None,
                    description=[" ".join(__doc__.split("\n\n")[1].split()), "Wall seconds per phase; "
                                 "the JSON also holds each phase's CPU seconds and the slowest groups' selection."])
    for r in rows:
        t.add(dict(r, load=f"{r['load_start'][0]} -> {r['load_end'][0]}"))
    for c in dict.fromkeys(r["case"] for r in rows):
        last = [r for r in rows if r["case"] == c]
        warm = min((r["total_s"] for r in last), default=None)
        t.goal(f"{c}: H-OBS + BN re-estimation within {last[0]['goal_s']:.0f} s (fastest run)",
               None if warm is None else warm <= last[0]["goal_s"], f"{warm:.1f} s" if warm is not None else "")
    t.add_sources(sources)
    return t
