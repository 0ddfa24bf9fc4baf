"""Run records of earlier code, converted to the rows the tables read, with their
provenance kept (the command lines, date, commit and machine as the original reports
recorded them).

The one-shot and R-SPAR comparisons of 2026-11 were produced by scripts that no longer
exist (``benchmarks/oneshot_fmnist.py`` and ``benchmarks/rspar_fmnist.py`` before the
experiments package; their code is in git history at the commits named below). Their
records live in ``docs/results/records/`` exactly as those scripts wrote them, next to the
reports they wrote; this module reads them and adds what the new rows name explicitly
(dataset, split, device key, source). The CPU they ran on was recorded only as "AMD EPYC,
2 cores", so their device key says so (``cpu:AMD EPYC:unrecorded``) and they never share
a table with rows measured since.
"""

from __future__ import annotations

import json
import os
import re

RECORDS = "docs/results/records"
LEGACY_DEVICE = "cpu:AMD EPYC:unrecorded"
LEGACY_LATENCY = "Flax jit, wall clock, 2 threads"

ONESHOT = {
    "key": "oneshot_fmnist@e14b8a9",
    "command": "python benchmarks/oneshot_fmnist.py --models resnet56,resnet20 --targets 0.5,0.333 "
               "--steps 50,200,epoch (17 runs adding rows to one cache; every command in "
               "docs/results/records/oneshot_fmnist_report.md)",
    "commit": "e14b8a9c9001931d6a8bffe9468adbcd105b63ba", "date": "2026-11-23",
    "machine": "AMD EPYC, 2 CPU cores (shared with other jobs), no GPU; jax 0.10.2, flax 0.12.8, "
               "torch 2.14.1, torch-pruning 1.6.1",
    "record": "docs/results/records/oneshot_fmnist.json",
    "calibration": "2048 training images (seed 0, no augmentation) for every row",
    "finetune": "one run of 468 steps (SGD momentum 0.9, lr 0.01 cosine, wd 5e-4, batch 128, seed 0, KD off), "
                "evaluated at 50, 200 and 468",
}
RSPAR = {
    "key": "rspar_fmnist@20d81b2",
    "command": "python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.5,0.333 --seeds 0,1,2 "
               "--allocations uniform,global,rspar --episodes 150 --warmup 20 --lbound 0.1 --rerank 10 "
               "--finetune_steps 200 --workdir runs/rspar_fmnist_v3 --reuse_from runs/rspar_fmnist_v2",
    "commit": "20d81b2ea1c94464bafbd7899b027b179c60dea4", "date": "2026-11-22",
    "machine": "AMD EPYC, 2 cores (shared, load 4.1-5.0); jax 0.10.2",
    "record": "docs/results/records/rspar_fmnist.json",
    "calibration": "2048 training images: 1792 for the Hessians, the last 256 R-SPAR's reward split; "
                   "BN re-estimated on all 2048",
    "finetune": "200 steps (SGD momentum 0.9, lr 0.01 cosine, wd 5e-4, batch 128, seed 0)",
}
# What a row may carry of its own over the base: where and with what it was measured.
OWN_KEYS = ("seed", "device", "source", "options", "resolved_options", "pruning_ratio")
_REFUSED = re.compile(r"^\* (\w+) kept ([0-9.]+): `([^`]+)` - (kept ([0-9.]+) of the MACs.*)$")


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def _method(label: str) -> str:
    if label.startswith("tp-"):
        return "torch-pruning"
    return label.partition("#")[0].partition("@")[0].partition("-")[0]


def oneshot_rows(data: list | None = None, root: str = ".", *, refused: list[dict] | None = None,
                 base: dict | None = None) -> list[dict]:
    """The one-shot comparison's rows (both models, both targets, every method and peer),
    and its refused rows with ``refused`` set: ``refused`` (the study's own refused rows,
    ``model``, ``method``, ``target_macs_ratio``, ``macs_ratio``, ``refused``) or, for the
    record of 2026-11, those listed in its report. ``base``: what every row names (default:
    the 2026-11 record's dataset, split, device, source, latency runtime, seed, budgets); a
    row's own ``seed``, ``device`` and ``source`` override the base's (rows restored from an
    earlier run keep where they were measured), and its ``options``, ``resolved_options``
    (what the method ran with) and ``pruning_ratio`` (Torch-Pruning's bisected ratio) are
    kept, so a record is enough to rebuild its table or to add seeds to it."""
    base = dict(base or {"dataset": "fashion_mnist", "split": "test", "device": LEGACY_DEVICE,
                         "source": ONESHOT["key"], "latency_runtime": LEGACY_LATENCY, "seed": 0,
                         "budgets": [50, 200, 468]})
    rows = []
    for r in data if data is not None else _read(os.path.join(root, RECORDS, "oneshot_fmnist.json")):
        rows.append({**base, "model": r["model"], "label": r["method"], "method": _method(r["method"]),
                     "framework": r["framework"], "target": r["target_macs_ratio"],
                     "macs_ratio": r["macs_ratio"], "params_ratio": r["params_ratio"],
                     "acc_dense": r["acc_dense"], "acc_oneshot": r["acc_oneshot"],
                     "acc_bn_recalibrated": r["acc_bn_recalibrated"],
                     "acc_by_steps": r.get("acc_by_steps") or {}, "acc_finetuned": r.get("acc_finetuned"),
                     "latency_speedup": r.get("latency_speedup") or {},
                     **{k: r[k] for k in OWN_KEYS if r.get(k) is not None}})
    if refused is not None:
        for r in refused:
            rows.append({**base, **{k: r[k] for k in OWN_KEYS if r.get(k) is not None},
                         "model": r["model"], "label": r["method"], "method": _method(r["method"]),
                         "framework": r.get("framework") or ("torch-pruning" if r["method"].startswith("tp-")
                                                             else "hobs_jax"),
                         "target": r["target_macs_ratio"], "macs_ratio": r.get("macs_ratio"),
                         "refused": r["refused"]})
        return rows
    with open(os.path.join(root, RECORDS, "oneshot_fmnist_report.md")) as f:
        for line in f:
            m = _REFUSED.match(line.strip())
            if m:
                rows.append({**base, "model": m[1], "label": m[3], "method": _method(m[3]),
                             "framework": "torch-pruning" if m[3].startswith("tp-") else "hobs_jax",
                             "target": float(m[2]), "macs_ratio": float(m[5]), "refused": m[4]})
    return rows


def rspar_rows(data: list | None = None, root: str = ".") -> list[dict]:
    """The R-SPAR comparison's rows on ResNet-56: uniform, global (deterministic, seed 0)
    and R-SPAR (three seeds), all with H-OBS's per-group compensation only
    (``propagate=0``); "one-shot" there was measured after BN re-estimation."""
    labels = {"uniform": "hobs-uniform@propagate=0", "global": "hobs-global@propagate=0",
              "rspar": "rspar@propagate=0"}
    rows = []
    data = data if data is not None else _read(os.path.join(root, RECORDS, "rspar_fmnist.json"))
    if isinstance(data, dict):  # the study's record since #22: {"command", "machine", ..., "rows"}
        data = data["rows"]
    for r in data:
        rows.append({"dataset": "fashion_mnist", "split": "test", "device": LEGACY_DEVICE,
                     "source": RSPAR["key"], "model": r["model"], "label": labels[r["allocation"]],
                     "method": "rspar" if r["allocation"] == "rspar" else "hobs",
                     "allocation": r["allocation"], "seed": r["seed"], "target": r["target_macs_ratio"],
                     "macs_ratio": r["macs_ratio"], "params_ratio": r["params_ratio"],
                     "acc_oneshot": None, "acc_bn_recalibrated": r["acc_oneshot"],
                     "acc_finetuned": r.get("acc_finetuned"), "budgets": [r.get("finetune_steps") or 200],
                     "acc_by_steps": {str(r.get("finetune_steps") or 200): r.get("acc_finetuned")},
                     "search_seconds": r.get("search_seconds"), "chosen": r.get("chosen"),
                     "keep": r.get("keep")})
    return rows


def sources() -> dict[str, dict]:
    """Provenance of every legacy record, by the key rows name in ``source``."""
    return {d["key"]: {k: v for k, v in d.items() if k != "key"} for d in (ONESHOT, RSPAR)}


def oneshot_legacy(data: list) -> tuple[list[dict], dict]:
    """Converter of ``oneshot_fmnist.json`` as the earlier script wrote it."""
    return oneshot_rows(data), {ONESHOT["key"]: sources()[ONESHOT["key"]]}


def rspar_legacy(data: list) -> tuple[list[dict], dict]:
    """Converter of ``rspar_fmnist.json`` as the earlier script wrote it."""
    return rspar_rows(data), {RSPAR["key"]: sources()[RSPAR["key"]]}


# -- run records written by this package ----------------------------------------------------
FORMAT = "hobs_jax.run_record"
FORMAT_VERSION = 1


def save(path: str, rows: list[dict], sources: dict[str, dict]) -> str:
    """Write a run record: the rows a table is built from and their sources (atomic)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"format": FORMAT, "version": FORMAT_VERSION, "rows": rows, "sources": sources}, f, indent=1,
                  default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def load(path: str, legacy=None) -> tuple[list[dict], dict[str, dict]]:
    """``(rows, sources)`` of a run record; a file in an earlier script's format goes
    through ``legacy(data) -> (rows, sources)``, and without one it is refused by name."""
    if not os.path.exists(path):
        raise ValueError(f"no run record at {path}: run the table's measurement first (make reproduce)")
    data = _read(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: {FORMAT} version {data.get('version')!r}; this code reads version "
                             f"{FORMAT_VERSION}")
        return list(data["rows"]), dict(data["sources"])
    if legacy is None:
        raise ValueError(f"{path} is not a {FORMAT} file and has no converter for an earlier format")
    return legacy(data)


def source_here(command: str, **extra) -> tuple[str, dict]:
    """A source key and record for rows measured now on this machine."""
    from hobs_jax.experiments import machine

    m = machine.record()
    commit = (m.get("git") or {}).get("commit") or "unknown"
    key = f"{m['date']}@{commit[:7]}"
    return key, {"command": command, "date": m["date"], "commit": commit,
                 "dirty": (m.get("git") or {}).get("dirty"), "machine": machine.describe(m),
                 "device": m["device"], "versions": {k: v for k, v in m["versions"].items() if v}, **extra}
