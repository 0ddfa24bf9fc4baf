"""One suite run: probe the models, plan the configurations, prepare and verify every one
of them, then time them interleaved over several rounds.

Timing method (docs/bench.md): every configuration is compiled and warmed up first;
then, in each of ``rounds`` rounds, every configuration runs ``warm`` untimed and
``ceil(iters / rounds)`` timed calls, one configuration after the other, in forward order
on even rounds and reverse order on odd ones. Configurations that are compared with each
other (the same batch, device and dtype: runtimes, dense and pruned) sit next to each other
in that order, so a slow phase of a shared machine hits them alike, and their ratios come
from one run. Only one worker computes at a time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hobs_jax.bench import runtimes as rt_mod
from hobs_jax.bench import stats, sysinfo
from hobs_jax.bench.protocol import Worker, WorkerError
from hobs_jax.bench.spec import ModelSpec

SCHEMA = "hobs_jax.bench/1"
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)
# The columns of results.csv (results.json rows hold the same keys).
COLUMNS = ("model", "runtime", "framework", "device", "dtype", "batch", "status", "reason",
           "p50_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "best_ms", "throughput_ips",
           "samples", "compile_s", "peak_rss_mb", "rss_delta_mb", "runtime_mem_mb",
           "verify_rel_err", "verify_tol", "note",
           # the machine and software, repeated on every row so that a CSV row stands alone
           "threads", "clock", "cpu", "isa", "gpu", "date", "commit", "versions")


@dataclasses.dataclass(frozen=True)
class Options:
    """How a suite run times (``python -m hobs_jax.bench --help`` has the same knobs).

    Attributes:
      batch_sizes: examples per call.
      warmup: untimed calls per configuration after its first (compiling) call.
      iters: timed calls per configuration, spread over ``rounds``.
      rounds: interleaved rounds (module docstring).
      round_warmup: untimed calls at the start of each round's turn.
      threads: CPU threads per framework (0: every core this process may use).
      verify: refuse to time when a runtime's outputs disagree with Flax.
      devices: ``cpu`` and/or ``gpu`` (None: the GPU when one is visible, else the CPU).
      dtypes: None: each runtime's defaults on the device (float32 on a CPU; on a GPU also
        bfloat16, and float16 for TensorRT).
      clock: ``wall`` (time per call) or ``cpu`` (the worker's CPU time per call, with
        ``threads=1`` on a CPU only: the core time a call takes, i.e. its latency on an
        idle core, unaffected by other jobs preempting it on a shared machine).
      fast_depthwise: how XLA runs depthwise convs: 'auto' (on for a CPU device), 'on' or
        'off'. On, each depthwise conv is a sum of kh*kw shifted slices
        (:mod:`hobs_jax.models.depthwise`), the form XLA:CPU runs 5-15x faster than its
        grouped convolution; the network and its outputs are the same (verified like
        every configuration). Other runtimes are unaffected.
    """

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5
    iters: int = 50
    rounds: int = 5
    round_warmup: int = 1
    threads: int = 0
    verify: bool = True
    devices: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    clock: str = "wall"
    fast_depthwise: str = "auto"

    def validate(self) -> Options:
        sizes = tuple(self.batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch sizes {list(sizes)!r}: positive ints")
        for key, low in (("warmup", 0), ("iters", 1), ("rounds", 1), ("round_warmup", 0), ("threads", 0)):
            val = getattr(self, key)
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"{key}={val!r}: must be an int >= {low}")
        if self.devices is not None:
            rt_mod.parse_list(self.devices, "device", rt_mod.DEVICES)
        if self.dtypes is not None:
            rt_mod.parse_list(self.dtypes, "dtype", rt_mod.DTYPES)
        if self.fast_depthwise not in rt_mod.DEPTHWISE_MODES:
            raise ValueError(f"fast_depthwise={self.fast_depthwise!r}: use one of {rt_mod.DEPTHWISE_MODES}")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock={self.clock!r}: use 'wall' or 'cpu'")
        if self.clock == "cpu" and (self.threads != 1 or (self.devices is not None and "gpu" in self.devices)):
            raise ValueError("clock='cpu' needs threads=1 and CPU devices only (CPU time of several threads, "
                             "or of a GPU run, is not a latency)")
        return dataclasses.replace(self, batch_sizes=tuple(dict.fromkeys(sizes)))


@dataclasses.dataclass
class _Config:
    model: int
    runtime: rt_mod.Runtime
    framework: str | None
    device: str
    dtype: str
    batch: int
    status: str = "planned"
    reason: str = ""
    prep: dict = dataclasses.field(default_factory=dict)
    rounds: list = dataclasses.field(default_factory=list)
    rel_err: float | None = None

    @property
    def key(self) -> str:
        return f"{self.model}|{self.runtime.name}|{self.device}|{self.dtype}|{self.batch}"


@dataclasses.dataclass
class SuiteResult:
    """A finished run: ``meta`` (machine, software, options), ``models`` (what the probe
    found: path, input shape, widths, MACs) and ``rows`` (one per configuration, the keys
    of :data:`COLUMNS`; skipped and failed ones carry ``reason``)."""

    meta: dict
    models: list[dict]
    rows: list[dict]

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "meta": self.meta, "models": self.models, "rows": self.rows}

    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    def write(self, out_dir: str, *, plots: bool = True, baseline: str | None = None) -> dict[str, str]:
        """results.csv, results.json, summary.md (with speedups over model ``baseline``) and
        (``plots``) the figures; returns the paths."""
        from hobs_jax.bench import report

        return report.write(self, out_dir, plots=plots, baseline=baseline)


def _say(log: Callable[[str], None] | None, msg: str) -> None:
    if log is not None:
        log(msg)


def _stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _plan(specs, runtimes, devices, opts, gpu_present) -> list[_Config]:
    configs = []
    for mi, _ in enumerate(specs):
        for rt, fw in runtimes:
            for device in devices:
                dtypes = opts.dtypes or rt.default_dtypes.get(device) or rt.default_dtypes.get(
                    next(iter(rt.default_dtypes)), ())
                for dtype in dtypes:
                    for b in opts.batch_sizes:
                        c = _Config(mi, rt, fw, device, dtype, b)
                        if fw is None:
                            c.status, c.reason = "skipped", f"not installed: {rt.install}"
                        elif device not in rt.dtypes:
                            c.status, c.reason = "skipped", f"{rt.title} runs on {'/'.join(rt.dtypes)} only"
                        elif device == "gpu" and not gpu_present:
                            c.status, c.reason = "skipped", "no CUDA GPU on this machine"
                        elif dtype not in rt.dtypes[device]:
                            c.status, c.reason = "skipped", (f"{rt.title} on {device} runs "
                                                             f"{'/'.join(rt.dtypes[device])}, not {dtype}")
                        configs.append(c)
    order = {rt.name: i for i, (rt, _) in enumerate(runtimes)}
    # Neighbours in timing order are the configurations compared with each other.
    configs.sort(key=lambda c: (c.device, c.dtype, c.batch, order[c.runtime.name], c.model))
    return configs


def _machine_columns(machine: dict, opts: Options) -> dict:
    git = machine.get("git") or {}
    v = machine["versions"]
    return {"threads": opts.threads or machine["cpu"]["schedulable_cores"], "clock": opts.clock,
            "cpu": machine["cpu"]["model"],
            "isa": machine["cpu"]["isa"], "gpu": ", ".join(g["name"] for g in machine["gpus"]) or None,
            "date": machine["date"],
            "commit": (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else "") or None,
            "versions": ";".join(f"{k}={v[k]}" for k in ("jax", "jaxlib", "flax", "torch", "onnxruntime",
                                                           "torch-tensorrt", "tensorrt") if v.get(k))}


def _row(c: _Config, specs, opts, machine_cols: dict) -> dict:
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(machine_cols)
    row.update(model=specs[c.model].label, runtime=c.runtime.name, framework=c.framework, device=c.device,
               dtype=c.dtype, batch=c.batch, status=c.status, reason=c.reason or None)
    for k in ("compile_s", "peak_rss_mb", "rss_delta_mb", "runtime_mem_mb"):
        row[k] = c.prep.get(k)
    row["note"] = c.prep.get("note") or None
    row["verify_rel_err"] = c.rel_err
    row["verify_tol"] = rt_mod.TOLERANCE.get(c.dtype) if c.prep else None
    if c.status == "ok":
        row.update(stats.latency_stats(c.rounds, c.batch))
    return row


def run_suite(models: Sequence[ModelSpec], runtimes=None, options: Options | None = None, *,
              out_dir: str | None = None, plots: bool = True, baseline: str | None = None,
              log: Callable[[str], None] | None = _stderr) -> SuiteResult:
    """Benchmark ``models`` in ``runtimes`` (names; None: every known runtime, those not
    installed reported as skipped) and return the rows; with ``out_dir`` also write
    results.csv, results.json, summary.md (speedups over the model labelled ``baseline``)
    and plots there.

    Raises a one-line ``ValueError`` before any timing for: an unknown runtime, a named
    runtime that is not installed (naming the package), bad options, a batch size a model
    cannot take, and (``options.verify``) a runtime whose outputs disagree with Flax.
    """
    opts = (options or Options()).validate()
    specs = list(models)
    if not specs:
        raise ValueError("no models to benchmark")
    labels = [s.label for s in specs]
    if baseline is not None and baseline not in labels:
        raise ValueError(f"baseline {baseline!r} is not one of the models ({', '.join(labels)})")
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ValueError(f"two models are labelled {dup!r}; give each a distinct label")
    resolved, _explicit = rt_mod.resolve(runtimes)
    devices = rt_mod.parse_list(opts.devices, "device", rt_mod.DEVICES) if opts.devices else rt_mod.default_devices()
    if opts.clock == "cpu" and "gpu" in devices:
        raise ValueError("clock='cpu' needs CPU devices only (the CPU time of a GPU run is not its latency); "
                         "pass devices=('cpu',)")
    t_start = time.time()
    machine = sysinfo.machine()
    gpu_present = bool(machine["gpus"])
    scratch = tempfile.mkdtemp(prefix="hobs_bench_")
    log_dir = os.path.join(scratch, "logs")  # copied to out_dir/logs when the run finishes
    workers: dict[str, Worker] = {}
    finished = False
    try:
        # 1. Probe: every model loaded (or built with random weights and saved), every
        #    batch size checked, Flax's float32 outputs on the shared input pool.
        infos = []
        pool_b = max(opts.batch_sizes)
        with Worker("jax", threads=opts.threads, gpu=False, log_path=os.path.join(log_dir, "probe.log")) as probe:
            for i, spec in enumerate(specs):
                _say(log, f"probe {spec.label}")
                try:
                    info = probe.call("probe", model=spec.to_dict(), batches=list(opts.batch_sizes),
                                      inputs=os.path.join(scratch, f"inputs_{i}.npy"),
                                      reference=os.path.join(scratch, f"reference_{i}.npy"),
                                      materialize=os.path.join(scratch, "models", str(i)), pool=pool_b)
                except WorkerError as e:
                    raise ValueError(str(e).removeprefix("ValueError: ")) from None
                info = {k: v for k, v in info.items() if k != "ok"}
                info.update(label=spec.label, onnx=spec.onnx)
                infos.append(info)
        configs = _plan(specs, resolved, devices, opts, gpu_present)

        # 2. ONNX files for the runtimes that read them (one export process).
        need = sorted({c.model for c in configs if c.status == "planned"
                       and (c.runtime.name, c.framework) in rt_mod.NEEDS_ONNX and not infos[c.model]["onnx"]})
        if need:
            with Worker("export", threads=opts.threads, log_path=os.path.join(log_dir, "export.log")) as ex:
                for mi in need:
                    _say(log, f"export {specs[mi].label} to ONNX")
                    try:
                        infos[mi]["onnx"] = ex.call("export_onnx", model_path=infos[mi]["path"],
                                                    input_shape=infos[mi]["input_shape"],
                                                    out=os.path.join(scratch, f"model_{mi}.onnx"))["path"]
                    except WorkerError as e:
                        infos[mi]["onnx_error"] = str(e)
            for c in configs:
                if (c.status == "planned" and (c.runtime.name, c.framework) in rt_mod.NEEDS_ONNX
                        and not infos[c.model]["onnx"]):
                    c.status, c.reason = "skipped", f"no ONNX export: {infos[c.model].get('onnx_error')}"

        # 3. One worker per framework; prepare (compile, first call = verification output).
        hello = {}
        active = [c for c in configs if c.status == "planned"]
        # a planned config always has a framework (None: not installed, skipped in _plan)
        for fw in dict.fromkeys(c.framework for c in active if c.framework is not None):
            workers[fw] = Worker(fw, threads=opts.threads, gpu="gpu" in devices,
                                 log_path=os.path.join(log_dir, f"{fw}.log"))
            try:
                hello[fw] = {k: v for k, v in workers[fw].call("hello").items() if k != "ok"}
            except WorkerError as e:
                for c in active:
                    if c.framework == fw:
                        c.status, c.reason = "failed", str(e)
        disagree = []
        for n, c in enumerate(active, 1):
            if c.status != "planned":
                continue
            spec, info = specs[c.model], infos[c.model]
            assert c.framework is not None
            try:
                c.prep = workers[c.framework].call(
                    "prepare", key=c.key, model_path=info["path"], onnx=info.get("onnx"),
                    inputs=os.path.join(scratch, f"inputs_{c.model}.npy"), runtime=c.runtime.name,
                    device=c.device, dtype=c.dtype, batch=c.batch, warmup=opts.warmup,
                    fast_depthwise=opts.fast_depthwise,
                    output=os.path.join(scratch, f"out_{n}.npy"))
            except WorkerError as e:
                c.status, c.reason = ("skipped" if e.unsupported else "failed"), str(e)
                _say(log, f"prepare {spec.label} {c.runtime.name} {c.device} {c.dtype} batch {c.batch}: {e}")
                continue
            ref = np.load(os.path.join(scratch, f"reference_{c.model}.npy"), mmap_mode="r")[:c.batch]
            try:
                c.rel_err = stats.relative_error(np.load(c.prep["output"]), ref)
            except ValueError as e:
                c.rel_err = float("inf")
                c.reason = str(e)
            c.status = "ok"
            _say(log, f"prepared [{n}/{len(active)}] {spec.label} {c.runtime.name} {c.device} {c.dtype} "
                      f"batch {c.batch}: {c.prep['compile_s']:.2f} s, rel. error {c.rel_err:.1e}")
            if c.rel_err > rt_mod.TOLERANCE[c.dtype]:
                disagree.append(c)
        if opts.verify and disagree:
            c = disagree[0]
            more = f" ({len(disagree) - 1} more configurations disagree)" if len(disagree) > 1 else ""
            raise ValueError(f"verify: {specs[c.model].label} in {c.runtime.name} ({c.device}, {c.dtype}, "
                             f"batch {c.batch}) disagrees with Flax: max|diff|/max|ref| = {c.rel_err:.2e} > "
                             f"{rt_mod.TOLERANCE[c.dtype]:.0e}" + (f" ({c.reason})" if c.reason else "")
                             + f"; nothing was timed{more}")

        # 4. Interleaved timing rounds.
        timed = [c for c in active if c.status == "ok"]
        per_round = stats.split_iters(opts.iters, opts.rounds)
        for r in range(opts.rounds):
            _say(log, f"round {r + 1}/{opts.rounds}: {len(timed)} configurations x {per_round} calls")
            for c in (timed if r % 2 == 0 else timed[::-1]):
                if c.status != "ok":
                    continue
                assert c.framework is not None
                try:
                    c.rounds.append(workers[c.framework].call("time", key=c.key, n=per_round,
                                                              warm=opts.round_warmup, clock=opts.clock)["ms"])
                except WorkerError as e:
                    c.status, c.reason = "failed", str(e)
        finished = True
    finally:
        for w in workers.values():
            w.close()
        if finished and out_dir:  # the workers' non-empty logs (tracebacks of failed rows) go with the results
            for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
                if os.path.getsize(os.path.join(log_dir, name)) > 0:
                    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
                    shutil.copy(os.path.join(log_dir, name), os.path.join(out_dir, "logs", name))
        shutil.rmtree(scratch, ignore_errors=True)
    for info in infos:
        if info["path"].startswith(scratch):
            info["path"] = None  # a zoo model materialized for this run only
        if info.get("onnx") and str(info["onnx"]).startswith(scratch):
            info["onnx"] = "exported"
    meta = {"machine": machine, "load_average_end": sysinfo.load_average(), "devices": list(devices),
            "options": dataclasses.asdict(opts), "runtimes": [r.name for r, _ in resolved],
            "workers": hello, "seconds": round(time.time() - t_start, 1), "argv": list(sys.argv), "baseline": baseline}
    cols = _machine_columns(machine, opts)
    result = SuiteResult(meta, infos, [_row(c, specs, opts, cols) for c in configs])
    if out_dir:
        result.write(out_dir, plots=plots, baseline=baseline)
    return result
