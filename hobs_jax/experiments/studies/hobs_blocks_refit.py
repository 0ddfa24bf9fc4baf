"""H-OBS's sequential refit on layers after a global pooling (docs/hobs.md, Sec. 8): the
whole method on the small MobileNetV2 and EfficientNet-B0 at a quarter of their widths,
uniform allocation at half the MACs, three ways (hobs_jax.analysis.compensation.refit_study):
no sequential refit (propagate=0), the refit of every layer (the behaviour before
propagate_min_rows), and the default, which leaves a layer with fewer than
propagate_min_rows (2) calibration rows per kept input at its OBS compensation (the
layers it left are listed). Per way: the relative error of the logits against the dense
network on held-out Fashion-MNIST test images, and the wall seconds of the pruning. Random
weights, BatchNorm statistics re-estimated on the calibration images (training split), the
same plan in all three ways: the figures compare the ways, they are not accuracies.
"""

from __future__ import annotations

from hobs_jax.experiments.studies.hobs_blocks import legacy, note_settings
from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hobs_blocks_refit", "benchmarks/hobs_blocks.py"


def rows_of(result: dict, device: str, source: str) -> list[dict]:
    """Table rows of one model's :func:`refit_study` result, one per way."""
    return [{"model": result["model"], "widths": f"1/{result['divisor']}", "way": way,
             "logits_relative_error": e["logits_relative_error"], "target": result["target"],
             "macs_ratio": e["macs_ratio"], "not_refit": list(e["not_refit"]),
             "not_refit_layers": ", ".join(e["not_refit"]) or "none", "seconds": e["seconds"],
             "calibration_images": result["calibration_images"], "test_images": result["test_images"],
             "weights": result["weights"], "dataset": "fashion_mnist", "split": "test", "device": device,
             "source": source} for way, e in result["ways"].items()]


def measure(models, divisor: int = 4, *, device: str, source: str) -> list[dict]:
    """Rows of :func:`refit_study` for each zoo model name in ``models``."""
    from hobs_jax import models as zoo
    from hobs_jax.analysis.compensation import refit_study

    for name in models:  # an unknown name fails in one line before any run
        zoo.get_entry(name)
    rows = []
    for name in models:
        rows += rows_of(refit_study(name, divisor=divisor), device, source)
        print(f"{name}: {sum(r['seconds'] for r in rows if r['model'] == name):.1f} s", flush=True)
    return rows


def from_legacy(data: list) -> tuple[list[dict], dict]:
    """The list of per-model results ``benchmarks/hobs_blocks.py --refit --out`` wrote before
    the experiments package (``docs/results/records/hobs_blocks_refit.json``), figures unchanged."""
    return legacy(NAME, data, rows_of, "PYTHONPATH=. python benchmarks/hobs_blocks.py --refit --models "
                  "efficientnet_b0_small,mobilenet_v2_small --out docs/results/hobs_blocks_refit.json")


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "H-OBS's sequential refit after global pooling: three ways, quarter widths",
                    [Column("widths", "widths"), Column("way", "way"),
                     Column("logits_relative_error", "logits relative error", "float", 3, best="min"),
                     Column("macs_ratio", "MACs kept", "float", 4),
                     Column("not_refit_layers", "layers not refit"), Column("seconds", "wall s", "float", 1)],
                    group_by=("model",), description=[" ".join(__doc__.split())])
    t.extend(rows)
    note_settings(t, (("calibration_images", "calibration images"), ("test_images", "test images"),
                      ("weights", "weights")))
    every, default = ({r["model"]: r["logits_relative_error"] for r in t.rows if r["way"] == w}
                      for w in ("refit every layer", "default"))
    both = sorted(set(every) & set(default))
    t.goal("the default refit's logits error is at most that of refitting every layer",
           met=all(default[m] <= every[m] for m in both) if both else None,
           detail=", ".join(f"{m} {default[m]:.3f} against {every[m]:.3f}" for m in both))
    t.add_sources(sources)
    return t
