"""Latency columns for tables of saved pruned networks: dense and every row's network timed
in one interleaved run of the benchmark suite (:func:`hobs_jax.bench.run_suite`), each row
getting ``latency_speedup = {"RUNTIME@BATCH": dense p50 / its p50}``. Used by Table 1
(:mod:`hobs_jax.experiments.equal_budget`)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

LATENCY_BATCHES = (1, 64)
LATENCY_COLUMNS = (("xla", "XLA"), ("onnxruntime", "ORT"))


def time_rows(rows: list[dict], checkpoint: str, runtimes: Sequence[str], out_dir: str, *,
              input_shape: tuple[int, int, int] = (28, 28, 1), rounds: int = 4, iters: int = 24) -> int:
    """Times the dense checkpoint and every row's saved network (``model_dir``) in one
    interleaved run of the benchmark suite (``runtimes``, batch 1 and 64, one thread, CPU
    time per call: the suite's mode for a shared machine) and sets each row's
    ``latency_speedup`` to ``{"RUNTIME@BATCH": dense p50 / row p50}``. A row whose network
    is not on disk (restored from a published record into a fresh checkout) keeps the
    speedups and ``latency_timing`` it carries from the run that timed it, or ``None``:
    :func:`carried_rows` lists them so a report can say so. Returns how many rows were
    timed in this run."""
    from hobs_jax.bench import ModelSpec, Options, run_suite, speedups, sysinfo

    timed = [r for r in rows if r.get("model_dir") and os.path.isdir(r["model_dir"])]
    timed_ids = {id(r) for r in timed}
    for r in rows:
        if id(r) in timed_ids or not r.get("latency_speedup") or not r.get("latency_timing"):
            r["latency_speedup"] = None
        else:
            r["latency_timing"] = {**r["latency_timing"], "carried_over": True}
    if not timed or not runtimes:
        return 0
    label = {id(r): f"{r['method']}_{float(r['target_macs_ratio']):g}_s{r['seed']}" for r in timed}
    models = [ModelSpec.from_saved(checkpoint, label="dense", input_shape=input_shape)] + [
        ModelSpec.from_saved(r["model_dir"], label=label[id(r)], input_shape=input_shape) for r in timed]
    opts = Options(batch_sizes=LATENCY_BATCHES, warmup=3, iters=iters, rounds=rounds, threads=1, clock="cpu",
                   devices=("cpu",))
    suite = run_suite(models, list(runtimes), opts, out_dir=out_dir, baseline="dense")
    for r in timed:
        r["latency_speedup"] = {f"{s['runtime']}@{s['batch']}": float(s["speedup"])
                                for s in speedups(suite.rows, "dense", label[id(r)])} or None
        r["latency_timing"] = {"runtimes": list(runtimes), "batches": list(LATENCY_BATCHES), "threads": 1,
                               "clock": "cpu", "rounds": rounds, "iters": iters, "out_dir": out_dir,
                               "date": time.strftime("%Y-%m-%d", time.gmtime()),
                               "device": sysinfo.describe(sysinfo.machine())}
    return len(timed)


def carried_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    """The rows whose ``latency_speedup`` was carried over from an earlier timing run rather
    than measured in the last :func:`time_rows` call."""
    return [r for r in rows if r.get("latency_speedup") and _is_carried(r)]


def _is_carried(row: Mapping) -> bool:
    return bool((row.get("latency_timing") or {}).get("carried_over"))


def carried_note(rows: Sequence[Mapping]) -> str:
    """One sentence naming the rows whose latency comes from an earlier timing run, grouped
    by that run's date and device; empty when there are none."""
    runs: dict[tuple[str, str], list[str]] = {}
    for r in carried_rows(rows):
        t = r["latency_timing"]
        device = str(t.get("device", "an unrecorded device")).split(", load ")[0]  # the load is of that moment
        runs.setdefault((str(t.get("date", "")), device), []).append(
            f"{r['method']} at {float(r['target_macs_ratio']):g} seed {r['seed']}")
    if not runs:
        return ""
    return ("Latency carried over from an earlier timing run (these rows' networks are not in this workdir; "
            "each speedup is against dense timed in that run): " + "; ".join(
                f"the run{f' of {date}' if date else ''} on {device}: {', '.join(names)}"
                for (date, device), names in runs.items())
            + ". A table cell with seeds timed in this run shows only those.")


def latency_mean(rows: Sequence[Mapping]) -> dict[str, float] | None:
    """Mean ``latency_speedup`` per ``RUNTIME@BATCH`` over the rows (seeds) that have it;
    where some were timed in this run and others carried over from an earlier one, over this
    run's only (one cell never mixes two timing runs)."""
    fresh = [r for r in rows if r.get("latency_speedup") and not _is_carried(r)]
    rows = fresh or rows
    keys = sorted({k for r in rows for k in (r.get("latency_speedup") or {})})
    if not keys:
        return None
    return {k: float(np.mean([r["latency_speedup"][k] for r in rows if k in (r.get("latency_speedup") or {})]))
            for k in keys}
