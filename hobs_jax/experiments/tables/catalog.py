"""The published pruning tables: what each runs (sweeps over the pipeline, or run records
of earlier code) and how its rows become a table under docs/results/.

``python -m hobs_jax.experiments.tables NAME`` makes one; ``make reproduce`` makes them
all (``QUICK=1``: the entries marked quick, which fit in minutes on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from hobs_jax.experiments import records
from hobs_jax.experiments.sweep import Sweep, run_sweep
from hobs_jax.experiments.tables import ablation, oneshot, sensitivity, stability, table1
from hobs_jax.experiments.tables.ablation import Pair
from hobs_jax.experiments.tables.common import plot_curves
from hobs_jax.experiments.tables.sensitivity import Param


@dataclasses.dataclass(frozen=True)
class Run:
    """Where a table reads and writes: ``workdir`` holds the sweep rows, ``out`` the
    tables; ``cached_only`` builds from finished rows without running any."""

    workdir: str = "runs/experiments"
    out: str = "docs/results"
    cached_only: bool = False

    def sweep(self, s: Sweep) -> list[dict]:
        return run_sweep(dataclasses.replace(s, workdir=self.workdir), cached_only=self.cached_only)

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    make: Callable[[Run], list[str]]
    quick: bool = False
    sweeps: Callable[[], list[Sweep]] = lambda: []


# -- run records of earlier code ------------------------------------------------------------
LEGACY = ("Run records of earlier code (docs/results/records/), converted with their provenance by "
          "hobs_jax.experiments.records; not rerun here (hours of CPU), rerunnable as the sweeps of "
          "hobs_jax.experiments.tables.catalog.")


def make_oneshot(run: Run) -> list[str]:
    t = oneshot.build("oneshot_fmnist", "One-shot pruning on Fashion-MNIST at equal MACs (run records of 2026-11)",
                      records.oneshot_rows(), sources=records.sources(), description=[
                          LEGACY, f"Calibration: {records.ONESHOT['calibration']}. Fine-tuning: "
                          f"{records.ONESHOT['finetune']}. Latency: dense / pruned, {records.LEGACY_LATENCY}. "
                          "Top-1 on the 10,000 test images, in %."])
    return t.write(run.path("oneshot_fmnist")) + [plot_curves(t, run.path("oneshot_fmnist_curve.png"))]


def make_table1_legacy(run: Run) -> list[str]:
    t = table1.build("table1_fmnist", "Table 1: ResNet-20 and ResNet-56 on Fashion-MNIST (run records of 2026-11)",
                     records.oneshot_rows(), sources=records.sources(), description=[
                         LEGACY, "After = after 468 fine-tuning steps where the row was fine-tuned, else one-shot "
                         f"(after BN re-estimation). Latency: {records.LEGACY_LATENCY}."])
    return t.write(run.path("table1_fmnist"))


LEGACY_PAIRS = [Pair("Hessian (hobs vs hobs_nohessian)", "hobs", "hobs_nohessian", "oneshot", budgets=(50, 200, 468)),
                Pair("Hessian (hobs vs hobs_nohessian)", "hobs", "hobs_nohessian", "finetuned", budgets=(50, 200, 468)),
                Pair("refit (hobs vs propagate=0)", "hobs", "hobs@propagate=0", "oneshot", budgets=(50, 200, 468)),
                Pair("refit (hobs vs propagate=0)", "hobs", "hobs@propagate=0", "finetuned", budgets=(50, 200, 468)),
                Pair("BN re-estimation", "hobs", "hobs before BN re-est.", "oneshot", before_bn=True,
                     budgets=(50, 200, 468)),
                Pair("RL allocation (rspar vs hobs global, propagate=0)", "rspar@propagate=0",
                     "hobs-global@propagate=0", "oneshot", budgets=(200,)),
                Pair("RL allocation (rspar vs hobs global, propagate=0)", "rspar@propagate=0",
                     "hobs-global@propagate=0", "finetuned", budgets=(200,))]


def make_ablation_legacy(run: Run) -> list[str]:
    t = ablation.build("ablation_fmnist", "Module ablation on Fashion-MNIST (run records of 2026-11)",
                       records.oneshot_rows() + records.rspar_rows(), LEGACY_PAIRS, sources=records.sources(),
                       description=[LEGACY, "Without BN re-estimation is the same run's accuracy before "
                                    "re-estimation. Distillation and width alignment were not part of these "
                                    "runs (see ablation_resnet20)."])
    return t.write(run.path("ablation_fmnist"))


def make_rspar_legacy(run: Run) -> list[str]:
    from hobs_jax.rspar import report

    t = stability.build("rspar_fmnist", "R-SPAR vs H-OBS allocations on ResNet-56, 3 seeds (run records of 2026-11)",
                        records.rspar_rows(), sources=records.sources(), description=[
                            LEGACY, f"Calibration: {records.RSPAR['calibration']}. Fine-tuning: "
                            f"{records.RSPAR['finetune']}. Uniform and global allocations are deterministic "
                            "and were run once (seed 0)."])
    paths = t.write(run.path("rspar_fmnist"))
    import json

    for target in ("0.5", "0.333"):
        prefix = run.path(f"rspar_fmnist_allocation_{target}")
        if os.path.exists(prefix + ".json"):
            with open(prefix + ".json") as f:
                rec = json.load(f)
            paths += list(report.save_allocation(prefix, rec, f"ResNet-56, kept {target} of the MACs"))
    prefix = run.path("rspar_fmnist_curve")
    if os.path.exists(prefix + ".json"):
        with open(prefix + ".json") as f:
            paths += list(report.save_learning_curve(prefix, json.load(f), "R-SPAR search, ResNet-56"))
    return paths


# -- fresh rows on ResNet-20 ----------------------------------------------------------------
SMALL_CALIB = (("calibrate.num_images", 512),)
SENSITIVITY = (Param("damp", "damp", (0.001, 0.01, 0.1), 0.01),
               Param("calibration images", "calibrate.num_images", (128, 256, 512, 2048), 512),
               Param("channels_per_step", "channels_per_step", (1, 2, 4), 1),
               Param("propagate_images", "propagate_images", (128, 256, 512), 512))
FRESH = ("Rows run by this repository's sweep runner (each row one pipeline run: the shipped checkpoint, "
         "calibration, pruning, BN re-estimation on the calibration images, evaluation on the 10,000 test images).")


def sensitivity_sweeps() -> list[Sweep]:
    variants = tuple(dict.fromkeys(v for p in SENSITIVITY for v in p.variants("hobs")))
    return [Sweep("sensitivity_resnet20", ("resnet20",), variants, (0.5,), overrides=SMALL_CALIB)]


def make_sensitivity(run: Run) -> list[str]:
    rows = [r for s in sensitivity_sweeps() for r in run.sweep(s)]
    t = sensitivity.build("sensitivity_resnet20", "H-OBS sensitivity to its hyperparameters: ResNet-20, half the MACs",
                          rows, SENSITIVITY, description=[FRESH, "Base: H-OBS defaults with 512 calibration images "
                                                          "(the pipeline's default is 2048), seed 0, no fine-tuning."])
    return t.write(run.path("sensitivity_resnet20"))


def stability_sweeps() -> list[Sweep]:
    return [Sweep("stability_resnet20", ("resnet20",), ("hobs", "hobs-uniform", "magnitude-uniform"), (0.5,),
                  seeds=(0, 1, 2), overrides=SMALL_CALIB)]


def make_stability(run: Run) -> list[str]:
    rows = [r for s in stability_sweeps() for r in run.sweep(s)]
    t = stability.build("stability_resnet20", "Stability over seeds: ResNet-20, half the MACs, one-shot", rows,
                        description=[FRESH, "The seed draws the 512 calibration images (the Hessians, the refit "
                                     "and BN re-estimation all use them); no fine-tuning."])
    return t.write(run.path("stability_resnet20"))


ABLATION_PAIRS = [Pair("Hessian", "hobs", "hobs_nohessian"),
                  Pair("refit", "hobs", "hobs@propagate=0"),
                  Pair("RL allocation", "rspar", "hobs"),
                  Pair("BN re-estimation", "hobs", "hobs@prune.bn_recalibrate=false"),
                  Pair("distillation", "hobs@finetune.kd.enabled=true", "hobs", "finetuned", budgets=(200,)),
                  Pair("width alignment", "hobs@prune.round_to=8", "hobs", "latency", budgets=(), latency=True)]


def ablation_sweeps() -> list[Sweep]:
    return [Sweep("ablation_resnet20", ("resnet20",), ("hobs", "hobs_nohessian", "hobs@propagate=0", "rspar",
                                                       "hobs@prune.bn_recalibrate=false"), (0.5,),
                  overrides=SMALL_CALIB),
            Sweep("ablation_resnet20_kd", ("resnet20",), ("hobs", "hobs@finetune.kd.enabled=true"), (0.5,),
                  budgets=(200,), overrides=SMALL_CALIB),
            Sweep("ablation_resnet20_latency", ("resnet20",), ("hobs", "hobs@prune.round_to=8"), (0.5,),
                  benchmark=True, overrides=SMALL_CALIB)]


def make_ablation(run: Run) -> list[str]:
    rows = [r for s in ablation_sweeps() for r in run.sweep(s)]
    t = ablation.build("ablation_resnet20", "Module ablation: ResNet-20, half the MACs", rows, ABLATION_PAIRS,
                       description=[FRESH, "512 calibration images, seed 0. Distillation: 200 fine-tuning steps "
                                    "with and without KD from the dense network. Width alignment: kept counts "
                                    "allocated in multiples of 8 (XLA's width quantum) vs unaligned, latency in "
                                    "XLA on one core (CPU time per call)."])
    return t.write(run.path("ablation_resnet20"))


def table1_sweeps() -> list[Sweep]:
    return [Sweep("table1_resnet20", ("resnet20",), ("hobs", "hobs_nohessian", "magnitude-uniform", "udfc-uniform",
                                                     "depgraph-uniform"), (0.5,), budgets=(50, 200), benchmark=True)]


def make_table1(run: Run) -> list[str]:
    rows = [r for s in table1_sweeps() for r in run.sweep(s)]
    t = table1.build("table1_resnet20", "Table 1: ResNet-20 on Fashion-MNIST, half the MACs", rows, description=[
        FRESH, "2048 calibration images, seed 0; fine-tuning: the pipeline's recipe for 200 steps (evaluated at 50 "
        "and 200); latency: the benchmark stage, XLA on one core, CPU time per call."])
    return t.write(run.path("table1_resnet20")) + [plot_curves(t, run.path("table1_resnet20_curve.png"))]


ENTRIES = {e.name: e for e in [
    Entry("oneshot_fmnist", "one-shot comparison, run records of 2026-11", make_oneshot, quick=True),
    Entry("table1_fmnist", "Table 1 from the one-shot run records", make_table1_legacy, quick=True),
    Entry("ablation_fmnist", "module ablation from the run records", make_ablation_legacy, quick=True),
    Entry("rspar_fmnist", "R-SPAR over 3 seeds, run records", make_rspar_legacy, quick=True),
    Entry("sensitivity_resnet20", "H-OBS hyperparameters, fresh", make_sensitivity, quick=True,
          sweeps=sensitivity_sweeps),
    Entry("stability_resnet20", "3 seeds, paired t-test, fresh", make_stability, quick=True, sweeps=stability_sweeps),
    Entry("ablation_resnet20", "module ablation, fresh", make_ablation, sweeps=ablation_sweeps),
    Entry("table1_resnet20", "Table 1 with fine-tuning and latency, fresh", make_table1, sweeps=table1_sweeps),
]}
