"""How well H-OBS's compensation repairs the last block of MobileNetV2, EfficientNet-B0 and
ViT (the small zoo forms at 28x28x1; docs/hobs.md, Sec. 8): chosen groups of the block
pruned to half their channels along H-OBS's path and their consumers compensated, nothing
else pruned (hobs_jax.analysis.compensation.last_block_study). Per consumer layer and
for the block's output, the relative error ||y - y_dense|| / ||y_dense|| on the
first test images of Fashion-MNIST, with the compensation and without it (the kept rows'
dense weights). Random weights (no trained checkpoint of these forms exists), BatchNorm
statistics re-estimated on the calibration images (Fashion-MNIST training split): the
figures compare compensated and uncompensated outputs, they are not accuracies.

A model's row "block" is the sown block output (ViT: the encoder layer's output minus its
input, i.e. its two residual branches together); the wall seconds are those of the
model's whole study (Hessians, path, compensation, errors), on the row of its block.
"""

from __future__ import annotations

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hobs_blocks", "benchmarks/hobs_blocks.py"
DATE = "2026-12-06"
#: The machine the committed figures ran on, as docs/hobs.md Sec. 8 stated it (the earlier
#: script's JSON names none); its device key is the one this machine family records.
LEGACY_DEVICE = "cpu:Intel(R) Xeon(R) Processor:avx512f"
LEGACY_MACHINE = "2-core Intel Xeon (AVX-512), shared with other jobs (load average 12-17)"


def _groups(r: dict) -> str:
    """``features.17.hidden 480 of 960``, one entry per pruned group (its width entries)."""
    return ", ".join(f"{'+'.join(r['groups'][g])} {r['removed'][g]} of {r['sizes'][g]}" for g in r["groups"])


def rows_of(result: dict, device: str, source: str) -> list[dict]:
    """Table rows of one model's :func:`last_block_study` result: one per consumer, then
    the block's output."""
    base = {"model": result["model"], "groups": _groups(result), "calibration_images": result["calibration_images"],
            "test_images": result["test_images"], "damp": result["damp"], "seed": result["seed"],
            "weights": result["weights"], "dataset": "fashion_mnist", "split": "test", "device": device,
            "source": source}
    out = [dict(base, part="consumer", output=layer, compensated=e["compensated"],
                uncompensated=e["uncompensated"], removed_rows=e["removed_rows"], rows=e["rows"], seconds=None)
           for layer, e in result["consumers"].items()]
    b = result["block"]
    out.append(dict(base, part="block", output=b["output"], compensated=b["compensated"],
                    uncompensated=b["uncompensated"], removed_rows=None, rows=None, seconds=result["seconds"]))
    return out


def measure(models, calib: int = 512, test: int = 1000, keep: float = 0.5, *, device: str,
            source: str) -> list[dict]:
    """Rows of :func:`last_block_study` for each zoo model name in ``models``."""
    from hobs_jax.analysis.compensation import LAST_BLOCKS, last_block_study

    bad = [n for n in models if n not in LAST_BLOCKS]
    if bad:  # before tens of minutes of the first model
        raise ValueError(f"no last-block study for {', '.join(map(repr, bad))}; have {', '.join(LAST_BLOCKS)}")
    rows = []
    for name in models:
        r = last_block_study(name, calib=calib, test=test, keep=keep)
        rows += rows_of(r, device, source)
        print(f"{name}: {r['seconds']} s", flush=True)
    return rows


def legacy(name: str, data: list, rows_of, command: str) -> tuple[list[dict], dict]:
    """Rows and source of a per-model result list ``benchmarks/hobs_blocks.py`` wrote before
    the experiments package (``docs/results/records/<name>.json``; the figures unchanged),
    for this study and :mod:`~hobs_jax.experiments.studies.hobs_blocks_refit`."""
    key = f"{name}@2561caf"
    return ([row for r in data for row in rows_of(r, LEGACY_DEVICE, key)],
            {key: {"command": command, "date": DATE, "commit": "2561caf (committed with the figures)",
                   "machine": LEGACY_MACHINE, "note": "benchmarks/hobs_blocks.py before the experiments package"}})


def note_settings(t: ResultTable, labels: tuple[tuple[str, str], ...]) -> None:
    """One note per (row key, label): the values the rows hold, in order, without repeats."""
    for key, label in labels:
        t.note(f"{label}: {', '.join(dict.fromkeys(str(r[key]) for r in t.rows))}")


def from_legacy(data: list) -> tuple[list[dict], dict]:
    """The list of per-model results ``benchmarks/hobs_blocks.py --out`` wrote before the
    experiments package (``docs/results/records/hobs_blocks.json``), figures unchanged."""
    return legacy(NAME, data, rows_of,
                  "PYTHONPATH=. python benchmarks/hobs_blocks.py --out docs/results/hobs_blocks.json")


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "H-OBS compensation on the last block of MobileNetV2, EfficientNet-B0 and ViT",
                    [Column("model", "model"), Column("groups", "group(s): channels removed"),
                     Column("part", "output of"), Column("output", "output"),
                     Column("removed_rows", "kernel rows removed", "int"), Column("rows", "kernel rows", "int"),
                     Column("compensated", "compensated", "float", 3),
                     Column("uncompensated", "without compensation", "float", 3),
                     Column("seconds", "wall s (model)", "float", 1)],
                    iso_tolerance=None, description=[" ".join(__doc__.split())])
    t.extend(rows)
    note_settings(t, (("calibration_images", "calibration images"), ("test_images", "test images"),
                      ("damp", "dampening"), ("seed", "seed"), ("weights", "weights")))
    better = [r for r in t.rows if r["compensated"] < r["uncompensated"]]
    t.goal("the compensation lowers the held-out error of every consumer and block output",
           met=len(better) == len(t.rows) if t.rows else None, detail=f"{len(better)} of {len(t.rows)}")
    t.add_sources(sources)
    return t
