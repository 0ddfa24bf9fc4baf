"""Stage ``benchmark``: the dense vs the pruned network in each configured runtime, with
the inference suite (:mod:`hobs_jax.bench`): one worker process per framework, outputs
verified against Flax before timing, both networks timed interleaved in one run.

``benchmark.runtimes`` names the runtimes (``""``: XLA and ONNX Runtime on a CPU; XLA
and TensorRT, when installed, on a GPU). The suite's results.csv/json, summary.md and
plots land in ``<workdir>/benchmark/``; the stage's outputs (summary.json's ``latency``)
hold p50 and p95 of both networks per runtime and batch size, and, where the pruned
network is not faster, the pruned widths that are not multiples of the runtime's width
quantum (:mod:`hobs_jax.allocation.alignment`).
"""

from __future__ import annotations

from hobs_jax.pipeline.config import batch_sizes
from hobs_jax.pipeline.context import Context
from hobs_jax.pipeline.evaluate_stage import final_stage


def default_runtimes(gpu: bool) -> tuple[str, ...]:
    """XLA plus ONNX Runtime on a CPU, XLA plus TensorRT on a GPU (each only where
    installed)."""
    from hobs_jax.bench.runtimes import get_runtime

    peer = "tensorrt" if gpu else "onnxruntime"
    return ("xla",) + ((peer,) if get_runtime(peer).framework() else ())


def runtimes_of(config) -> tuple[str, ...]:
    """``benchmark.runtimes`` as names (validated: unknown or not installed is a one-line
    ``ValueError`` naming the key and the package)."""
    from hobs_jax.bench import runtimes as rt

    text = str(config.benchmark.runtimes).strip()
    if not text:
        return default_runtimes(rt.default_devices() == ("gpu",))
    try:
        return tuple(r.name for r, _ in rt.resolve(text)[0])
    except ValueError as e:
        raise ValueError(f"benchmark.runtimes={text!r}: {e}") from None


def unaligned_widths(dense: dict, pruned: dict, quantum: int) -> dict[str, int]:
    """The pruned width entries that changed and are not multiples of ``quantum``
    (attention head counts are counts of heads, not channels, and are left out)."""
    return {k: int(v) for k, v in sorted(pruned.items())
            if not k.endswith(".heads") and v != dense.get(k) and int(v) % quantum}


def rows_from(result, order: tuple[str, ...]) -> list[dict]:
    """Dense vs pruned per (runtime, device, dtype, batch), in ``order`` of runtimes then
    batch: both p50s (``dense_ms``, ``pruned_ms``) and p95s, the p50 speedup and both
    throughputs."""
    from hobs_jax.bench import speedups

    rank = {r: i for i, r in enumerate(order)}
    out = []
    for s in sorted(speedups(result.rows, "dense", "pruned"),
                    key=lambda s: (rank.get(s["runtime"], 99), s["device"], s["dtype"], s["batch"])):
        out.append({"runtime": s["runtime"], "device": s["device"], "dtype": s["dtype"], "batch": s["batch"],
                    "dense_ms": s["baseline_p50_ms"], "pruned_ms": s["p50_ms"],
                    "dense_p95_ms": s["baseline_p95_ms"], "pruned_p95_ms": s["p95_ms"],
                    "speedup": s["speedup"], "dense_ips": s["batch"] * 1e3 / s["baseline_p50_ms"],
                    "pruned_ips": s["batch"] * 1e3 / s["p50_ms"]})
    return out


def not_faster(rows: list[dict], dense_widths: dict, pruned_widths: dict, gpu_name: str | None) -> list[dict]:
    """One record per runtime/device/dtype in which the pruned network is not faster than
    dense at some batch size: the batches and speedups, the runtime's width quantum (measured
    on this device when cached, else the default) and the pruned widths off it."""
    from hobs_jax.allocation import alignment

    out: dict[tuple, dict] = {}
    for r in rows:
        if r["speedup"] >= 1.0:
            continue
        key = (r["runtime"], r["device"], r["dtype"])
        if key not in out:
            device = "gpu" if r["device"] == "gpu" else alignment.device_class()
            q, source = alignment.cached_quantum(r["runtime"], device, alignment.device_id(
                gpu_name if r["device"] == "gpu" else None))
            out[key] = {"runtime": r["runtime"], "device": r["device"], "dtype": r["dtype"], "batches": [],
                        "speedups": [], "quantum": q, "quantum_source": source,
                        "unaligned": unaligned_widths(dense_widths, pruned_widths, q)}
        out[key]["batches"].append(r["batch"])
        out[key]["speedups"].append(r["speedup"])
    return list(out.values())


def run(ctx: Context) -> dict:
    from hobs_jax.bench import ModelSpec, Options, run_suite, sysinfo
    from hobs_jax.bench import runtimes as rt

    c = ctx.config
    stage = final_stage(ctx)
    if stage is None:
        return {"rows": [], "speedup": None, "note": "no pruned model (prune stage not run)"}
    names = runtimes_of(c)
    h, w, ch = ctx.input_shape[1:]
    shape = (int(h), int(w), int(ch))
    models = [ModelSpec.from_saved(ctx.model_dir("train"), label="dense", input_shape=shape),
              ModelSpec.from_saved(ctx.model_dir(stage), label="pruned", input_shape=shape)]
    b = c.benchmark
    devices = ("cpu",) if b.clock == "cpu" else rt.default_devices()
    opts = Options(batch_sizes=batch_sizes(c), warmup=b.warmup, iters=b.iters, rounds=b.rounds,
                   threads=b.threads, clock=b.clock, devices=devices)
    out_dir = ctx.workdir.stage_dir("benchmark")
    result = run_suite(models, names, opts, out_dir=out_dir, baseline="dense")
    rows = rows_from(result, names)
    info = {m["label"]: m for m in result.models}
    gpus = result.meta["machine"]["gpus"]
    slow = not_faster(rows, info["dense"].get("widths") or {}, info["pruned"].get("widths") or {},
                      gpus[0]["name"] if gpus else None)
    first = [r for r in rows if r["runtime"] == rows[0]["runtime"]] if rows else []
    return {"rows": rows, "speedup": first[0]["speedup"] if first else None,
            "throughput_speedup": first[-1]["speedup"] if first else None,
            "runtimes": list(names), "device": sysinfo.describe(result.meta["machine"]),
            "rounds": b.rounds, "clock": b.clock, "threads": b.threads, "not_faster": slow,
            "not_timed": [{"runtime": r["runtime"], "batch": r["batch"], "model": r["model"],
                           "reason": r["reason"]} for r in result.rows if r["status"] != "ok"],
            "suite_dir": out_dir}
