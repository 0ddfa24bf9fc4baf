"""Where a first H-OBS call spends its XLA compile time: one H-OBS call (+ BN
re-estimation) on the Fashion-MNIST ResNet-56, 2048 calibration images, half the MACs, in a
fresh process with no compilation cache and ``jax_log_compiles`` on; JAX's own "Finished
XLA compilation of NAME in S sec" records summed by H-OBS phase (from the OBS engine's
timing hook, :func:`hobs_jax.obs.listen`) and by jitted function. Backend compile time
only (tracing and lowering are not in it); logging every compile slows the run a little,
so the phase times of :mod:`~hobs_jax.experiments.studies.hobs_cost` are the cost figures."""

from __future__ import annotations

import collections
import logging
import re
import time

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hobs_compiles", "benchmarks/hobs_compiles.py"
OTHER = "other (untimed steps in the method, surgery, finite check)"
_RECORD = re.compile(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec")


class CompileLog(logging.Handler):
    """Collects (phase, jitted name, seconds) from JAX's compile log records; also a timing
    hook listener that keeps the current H-OBS phase (phases nest: a stack)."""

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


def run(checkpoint: str, propagate: int, calib: int) -> dict:
    """In this (fresh) process: the compile records of one H-OBS call."""
    import jax

    import hobs_jax
    from hobs_jax import obs
    from hobs_jax.experiments.studies import calibration
    from hobs_jax.methods import make_task
    from hobs_jax.methods import run as run_method
    from hobs_jax.stats import reestimate_bn

    jax.config.update("jax_log_compiles", True)
    log = CompileLog()
    jlog = logging.getLogger("jax")
    jlog.addHandler(log)
    jlog.setLevel(logging.WARNING)
    jlog.propagate = False  # collected, not printed
    _, variables, meta = hobs_jax.load(checkpoint)
    c = calibration(calib)
    t0 = time.perf_counter()
    task = make_task("hobs", meta["model"], variables, target=0.5, calib=c,
                     options=dict(progress=False, propagate=propagate))
    log.phase = OTHER
    with obs.listen(log):
        res = run_method("hobs", task)
    log.phase = "bn_reestimation"
    reestimate_bn(res.model, res.variables, [c.images[i:i + 256] for i in range(0, len(c.images), 256)])
    return {"wall_s": time.perf_counter() - t0, "records": log.records}


def measure(checkpoint: str = "checkpoints/resnet56_fmnist", propagate: int = 1, calib: int = 2048, *,
            device: str, source: str) -> list[dict]:
    from hobs_jax.experiments.isolate import call

    r = call(f"{__name__}:run", drop_env=("JAX_COMPILATION_CACHE_DIR",), checkpoint=checkpoint,
             propagate=propagate, calib=calib)
    return _rows(r["records"], r["wall_s"], propagate, calib, device, source)


def _rows(records, wall_s, propagate, calib, device, source) -> list[dict]:
    by_phase: dict = collections.defaultdict(lambda: [0, 0.0])
    by_name: dict = collections.defaultdict(lambda: [0, 0.0])
    for phase, name, s in records:
        for d, k in ((by_phase, phase), (by_name, (phase, name))):
            d[k][0] += 1
            d[k][1] += s
    base = {"device": device, "source": source, "propagate": propagate, "calibration_images": calib,
            "run_wall_s": wall_s}
    rows = [dict(base, kind="phase", phase=k, function="", compiles=n, seconds=s)
            for k, (n, s) in sorted(by_phase.items(), key=lambda kv: -kv[1][1])]
    rows.append(dict(base, kind="total", phase="all", function="", compiles=len(records),
                     seconds=sum(s for _, _, s in records)))
    rows += [dict(base, kind="function", phase=p, function=f, compiles=n, seconds=s)
             for (p, f), (n, s) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]]
    return rows


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "hobs_compiles@legacy"
    records = [(p, "", v["seconds"] / max(v["compiles"], 1)) for p, v in d["by_phase"].items()
               for _ in range(v["compiles"])]
    rows = [r for r in _rows(records, d["wall_s_with_logging"], d["propagate"], d["calibration_images"],
                             "cpu:AMD EPYC:avx512f", key) if r["kind"] != "function"]
    base = {k: rows[0][k] for k in ("device", "source", "propagate", "calibration_images", "run_wall_s")}
    rows += [dict(base, kind="function", phase=f["phase"], function=f["function"], compiles=f["compiles"],
                  seconds=f["seconds"]) for f in d["by_function"][:12]]
    return rows, {key: {"command": d["command"].replace("", ""), "machine": d["device"],
                        "note": "benchmarks/hobs_compiles.py before the experiments package"}}


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "XLA compile time of a first H-OBS call",
                    [Column("kind", "by"), Column("phase", "phase"), Column("function", "jitted function"),
                     Column("compiles", "compilations", "int"), Column("seconds", "seconds", "float", 2)],
                    context=("device",), iso_tolerance=None, description=[" ".join(__doc__.split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
