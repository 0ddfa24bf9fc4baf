"""Table 1's row cache (:mod:`hobs_jax.experiments.equal_budget`): one JSON record per
(model, method, target, seed, budget) under ``WORKDIR/rows/``, so a rerun skips the rows it
finds, and ``--restore`` seeds the cache of a fresh checkout from a published run record."""

from __future__ import annotations

import json
import os

from hobs_jax.experiments import common


def row_path(workdir: str, model: str, method: str, target: float, seed: int, budget_epochs: float) -> str:
    """Where one row's record is cached (a rerun skips the rows it finds)."""
    return os.path.join(workdir, "rows", f"{model}_{method}_{target:g}_s{seed}_b{budget_epochs:g}.json")


def restore(record: str, workdir: str) -> int:
    """Write the rows of a published run record into ``workdir``'s row cache where missing;
    returns how many were written."""
    with open(record) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{record}: not an equal-budget run record (no 'rows' list)")
    n = 0
    for r in doc["rows"]:
        path = row_path(workdir, r["model"], r["method"], float(r["target_macs_ratio"]), int(r["seed"]),
                        float(r["budget_epochs"]))
        if not os.path.exists(path):
            timing = r.get("latency_timing")
            if timing and "device" not in timing:  # timed in the record's run, on its machine
                r = {**r, "latency_timing": {**timing, "device": doc.get("device", "an unrecorded device")}}
            common.write_json(path, r)
            n += 1
    return n


__all__ = ["row_path", "restore"]
