"""The one-shot study's row cache (``benchmarks/oneshot_fmnist.py``): where each finished
row's record lives under ``--workdir``, reading every cached row back, and restoring the
rows of a published run record into an empty cache (so a fresh checkout can add seeds or
rows to a published table without recomputing the rows it already has)."""

from __future__ import annotations

import glob
import json
import os

from hobs_jax.experiments import common
from hobs_jax.experiments.records import OWN_KEYS


def row_path(workdir: str, model: str, target: float, row: str, seed: int = 0) -> str:
    """A row's cached record: rows/MODEL/TARGET/ROW.json for seed 0 (the layout before
    seeds existed, so earlier workdirs keep their rows), rows/MODEL/TARGET/seedS/ROW.json
    for seed S > 0."""
    folder = os.path.join(workdir, "rows", model, f"{target:g}")
    return os.path.join(folder, *([f"seed{seed}"] if seed else []), f"{row}.json")


def cached_rows(workdir: str) -> list[dict]:
    """Every finished row record, each with its ``seed`` (records from before seeds: 0)."""
    files = sorted(glob.glob(os.path.join(workdir, "rows", "*", "*", "*.json"))
                   + glob.glob(os.path.join(workdir, "rows", "*", "*", "seed*", "*.json")))
    return [{"seed": 0, **json.load(open(f))} for f in files]


def restore_rows(record: str, workdir: str) -> int:
    """Write the rows of a published run record (``docs/results/records/NAME.json``, as
    :func:`oneshot_report.write_report` saves it) into ``workdir``'s row cache where no row
    file exists, so a fresh checkout can add seeds or rows to a published table without
    recomputing the rows it already has. Each restored row keeps the record's measurements,
    its device, its source (key and entry: the report lists it beside the new run's) and the
    options it ran with (the cache refuses to reuse a row whose options differ from the
    method's now), and carries the commands that made it (the source's ``rows_made_by``)
    as its ``command``. Returns how many rows were written."""
    with open(record) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise SystemExit(f"--restore {record}: not a run record (a JSON object with 'rows' and 'sources')")
    sources = data.get("sources") or {}
    written = 0
    for r in data["rows"]:
        try:
            model, label, target, seed = r["model"], r["label"], float(r["target"]), int(r.get("seed") or 0)
        except (KeyError, TypeError, ValueError):
            raise SystemExit(f"--restore {record}: a row without model, label and target: {r}") from None
        path = row_path(workdir, model, target, label, seed)
        if os.path.exists(path):
            continue
        src = sources.get(r.get("source"), {})
        rec = {"model": model, "method": label, "framework": r.get("framework"), "target_macs_ratio": target,
               "macs_ratio": r.get("macs_ratio"), "seed": seed, "restored_from": record,
               **{k: r[k] for k in OWN_KEYS if k in r and k != "seed"},
               **({"source_entry": src} if src else {}),
               **({"command": src["rows_made_by"]} if src.get("rows_made_by") else {})}
        if r.get("refused"):
            rec["refused"] = r["refused"]
        else:
            rec.update({k: r.get(k) for k in ("params_ratio", "acc_dense", "acc_oneshot", "acc_bn_recalibrated",
                                               "acc_finetuned")},
                       acc_by_steps=r.get("acc_by_steps") or {}, latency_speedup=r.get("latency_speedup") or {})
        common.write_json(path, rec)
        written += 1
    return written
