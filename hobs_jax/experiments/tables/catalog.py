"""The published pruning tables: what each runs (sweeps over the pipeline, or run records
of earlier code) and how its rows become a table under docs/results/.

``python -m hobs_jax.experiments.tables NAME`` makes one; ``make reproduce`` makes them
all (``QUICK=1``: the entries marked quick, which fit in minutes on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from hobs_jax.experiments import records
from hobs_jax.experiments.sweep import Sweep, run_sweep
from hobs_jax.experiments.tables import ablation, oneshot, sensitivity, stability, table1
from hobs_jax.experiments.tables.ablation import Pair
from hobs_jax.experiments.tables.common import plot_curves
from hobs_jax.experiments.tables.sensitivity import Param


@dataclasses.dataclass(frozen=True)
class Run:
    """How tables are made: ``workdir`` holds the sweep rows, ``out`` the tables (and the
    run records measured now, in ``<out>/records/``), ``records`` the committed run records
    tables are otherwise built from. ``mode``: 'quick' computes the entries marked
    quick and rebuilds the rest from their records, 'full' computes every entry that can be
    computed, 'records' computes nothing; ``cached_only`` uses finished sweep rows only."""

    workdir: str = "runs/experiments"
    out: str = "docs/results"
    records: str = records.RECORDS
    mode: str = "full"
    cached_only: bool = False

    def sweep(self, s: Sweep) -> list[dict]:
        return run_sweep(dataclasses.replace(s, workdir=self.workdir), cached_only=self.cached_only)

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def record(self, name: str) -> str:
        """Where the run record ``name`` is read: ``<out>/records/`` when a run wrote it
        there, else :attr:`records` (the committed ones)."""
        own = self.record_out(name)
        return own if os.path.exists(own) else os.path.join(self.records, f"{name}.json")

    def record_out(self, name: str) -> str:
        """Where a measured run record is written: ``<out>/records/`` (with the default
        ``out``, the committed records themselves), so a run writing its tables elsewhere
        leaves the repository's records alone."""
        return os.path.join(self.out, "records", f"{name}.json")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A published table: ``build(rows, sources, run)`` writes it (and its figures) from the
    rows of its run records ``inputs`` (default: its own name); ``compute(run)`` measures
    fresh rows (None: records only); ``legacy`` converts an input record of an earlier
    format; ``quick``: computed in ``make reproduce QUICK=1``."""

    name: str
    summary: str
    build: Callable[[list, dict, Run], list[str]]
    compute: Callable[[Run], tuple[list, dict]] | None = None
    legacy: Callable | None = None
    quick: bool = False
    inputs: tuple[str, ...] = ()
    sweeps: Callable[[], list[Sweep]] = lambda: []

    def computes(self, run: Run) -> bool:
        return self.compute is not None and (run.mode == "full" or (run.mode == "quick" and self.quick))

    def how(self, run: Run) -> str:
        """'computed' (measured now), 'records' (rebuilt from its run records) or 'missing'
        (a record it needs is absent: nothing to rebuild from)."""
        if self.computes(run):
            return "computed"
        need = self.inputs or (self.name,)
        return "records" if all(os.path.exists(run.record(n)) for n in need) else "missing"

    def make(self, run: Run) -> list[str]:
        if self.computes(run):
            assert self.compute is not None  # computes() is False without one
            rows, sources = self.compute(run)
            records.save(run.record_out(self.name), rows, sources)
        else:
            rows, sources = [], {}
            for name in self.inputs or (self.name,):
                r, s = records.load(run.record(name), ENTRIES[name].legacy if name in ENTRIES else None)
                rows += r
                sources.update(s)
        return self.build(rows, sources, run)


def study(name: str, module, summary: str, compute=None, table_kwargs: dict | None = None) -> Entry:
    """An entry for a benchmark study (:mod:`hobs_jax.experiments.studies`): its table is
    ``module.table(rows, sources, **table_kwargs)`` of the study's run record; ``compute``
    (None: rebuilt from the record; the study's benchmark script measures afresh)."""
    def build(rows, sources, run):
        return module.table(rows, sources, **(table_kwargs or {})).write(run.path(name))
    return Entry(name, summary, build, compute=compute, legacy=getattr(module, "from_legacy", None))


def _studies() -> list[Entry]:
    """The benchmark studies whose tables are rebuilt from their run records (each study's
    ``benchmarks/*.py`` script measures them afresh on this machine)."""
    from hobs_jax.experiments import equal_budget, recovery
    from hobs_jax.experiments.studies import (
        aligned_allocation,
        alignment_staircase,
        anymodel_fmnist,
        ast_controller,
        data_pipeline,
        depthwise_layer,
        fmnist_baselines,
        graph_discovery,
        hessian_gram,
        hobs_blocks,
        hobs_blocks_refit,
        hobs_compiles,
        hobs_cost,
        hobs_refit_parts,
        rspar_latency,
        train_throughput,
        workdir_lock,
    )

    return [study("anymodel_fmnist", anymodel_fmnist, "a network outside the zoo trained and pruned on "
                  "Fashion-MNIST, run record"),
            study("recovery_fmnist_resnet56", recovery, "recovery recipes after H-OBS on ResNet-56, run record"),
            study("recovery_fmnist_resnet56_epoch", recovery, "one-epoch recovery recipes after H-OBS on ResNet-56, "
                  "run record", table_kwargs={"name": "recovery_fmnist_resnet56_epoch"}),
            study("table1_resnet56", equal_budget, "Table 1: every method at equal training budgets on ResNet-56, "
                  "run record", table_kwargs={"name": "table1_resnet56"}),
            study("table1_resnet56_lr3e-3", equal_budget, "Table 1's H-OBS rows with the lr 3e-3 recipe (the "
                  "recipe check), run record", table_kwargs={"name": "table1_resnet56_lr3e-3"}),
            *[study(f"aligned_allocation_{n}", aligned_allocation, f"aligned/latency-budgeted allocation ({n}), "
                    "run record", table_kwargs={"name": f"aligned_allocation_{n}"})
              for n in ("r20", "r20b", "r56", "r56_measured")],
            study("alignment", alignment_staircase, "width staircases per runtime, run record"),
            study("ast_controller", ast_controller, "AST controller closed-loop simulation, run record"),
            study("fmnist_baselines", fmnist_baselines, "dense baselines trained on the H100, run record"),
            study("data_pipeline", data_pipeline, "input pipeline batches/s, run record"),
            study("depthwise_layer", depthwise_layer, "one depthwise conv layer in XLA, grouped conv vs "
                  "shift-add (train.fast_depthwise), run record"),
            study("graph", graph_discovery, "graph discovery time, run record"),
            study("hessian_gram", hessian_gram, "Hessian Gram reductions, run record"),
            study("hobs_blocks", hobs_blocks, "H-OBS compensation on the last block of MobileNetV2, "
                  "EfficientNet-B0 and ViT (random weights), run record"),
            study("hobs_blocks_refit", hobs_blocks_refit, "H-OBS sequential refit after global pooling, three "
                  "ways (random weights), run record"),
            study("hobs_compiles", hobs_compiles, "H-OBS compile counts, run record"),
            study("hobs_cost", hobs_cost, "H-OBS wall/CPU time and memory, run record"),
            study("hobs_cost_avx512", hobs_cost, "H-OBS cost on an AVX-512 CPU, run record",
                  table_kwargs={"name": "hobs_cost_avx512"}),
            study("hobs_refit_parts", hobs_refit_parts, "H-OBS refit parts, run record"),
            study("rspar_latency", rspar_latency, "R-SPAR latency budget, requested vs measured, run record"),
            study("train_throughput", train_throughput, "training steps/s, run record"),
            study("workdir_lock", workdir_lock, "workdir lock cost, run record")]


def _ast_entry(name: str = "ast_fmnist", summary: str = "adaptive sparse training grid, row cache") -> Entry:
    """An AST sweep's three tables, rebuilt from its row cache ``records/NAME.json``."""
    def build(rows, sources, run: Run) -> list[str]:
        from hobs_jax.experiments import ast_report

        (data,) = rows  # the sweep's row cache, whole (its schedule and commands with it)
        return [p for t in ast_report.tables(data, name=name) for p in t.write(run.path(t.name))]

    return Entry(name, summary, build, legacy=lambda data: ([data], {}))


def _rspar_variant(name: str, summary: str) -> Entry:
    """An R-SPAR run of its own (earlier options or a configuration choice): its tables
    (:mod:`hobs_jax.experiments.studies.rspar_report`) rebuilt from ``records/NAME.json``."""
    def build(rows, sources, run: Run) -> list[str]:
        import json

        from hobs_jax.experiments.studies import rspar_report

        curves = None  # the search's learning curves, saved beside the record's tables
        for path in (run.path(f"{name}_curve.json"),
                     os.path.join(os.path.dirname(os.path.abspath(run.records)), f"{name}_curve.json")):
            if os.path.exists(path):
                with open(path) as f:
                    curves = json.load(f)
                break
        (data,) = rows  # the run record, whole (its provenance with it)
        return [p for t in rspar_report.tables(data, name, curves) for p in t.write(run.path(t.name))]
    return Entry(name, summary, build, legacy=lambda data: ([data], {}))


def _block_ell_build(rows, sources, run: Run) -> list[str]:
    import json

    from hobs_jax.experiments.studies import block_ell_tables

    e2e = []
    if os.path.exists(run.record("block_ell_e2e")):
        with open(run.record("block_ell_e2e")) as f:
            e2e = json.load(f)
    return [p for t in block_ell_tables.tables(rows, e2e) for p in t.write(run.path(t.name))]


def _bench_build(rows, sources, run: Run) -> list[str]:
    from hobs_jax.experiments import bench_tables

    (index,) = rows  # the index of the published suite runs (their results.json beside it)
    return bench_tables.render_all(run.out, index, results=os.path.dirname(os.path.abspath(run.records)))


# -- run records of earlier code ------------------------------------------------------------
LEGACY = ("Run records of earlier code (docs/results/records/), converted with their provenance by "
          "hobs_jax.experiments.records; not rerun here (hours of CPU), rerunnable as the sweeps of "
          "hobs_jax.experiments.tables.catalog.")


def build_oneshot(rows, sources, run: Run) -> list[str]:
    t = oneshot.build("oneshot_fmnist", "One-shot pruning on Fashion-MNIST at equal MACs (run records of 2026-11)",
                      rows, sources=sources, description=[
                          LEGACY, f"Calibration: {records.ONESHOT['calibration']}. Fine-tuning: "
                          f"{records.ONESHOT['finetune']}. Latency: dense / pruned, {records.LEGACY_LATENCY}. "
                          "Top-1 on the 10,000 test images, in %."])
    return t.write(run.path("oneshot_fmnist")) + [plot_curves(t, run.path("oneshot_fmnist_curve.png"))]


def build_table1_legacy(rows, sources, run: Run) -> list[str]:
    t = table1.build("table1_fmnist", "Table 1: ResNet-20 and ResNet-56 on Fashion-MNIST (run records of 2026-11)",
                     rows, sources=sources, description=[
                         LEGACY, "After = after 468 fine-tuning steps where the row was fine-tuned. "
                         f"Latency: {records.LEGACY_LATENCY}."])
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


def build_ablation_legacy(rows, sources, run: Run) -> list[str]:
    t = ablation.build("ablation_fmnist", "Module ablation on Fashion-MNIST (run records of 2026-11)", rows,
                       LEGACY_PAIRS, sources=sources,
                       description=[LEGACY, "Without BN re-estimation is the same run's accuracy before "
                                    "re-estimation. One seed per row (the R-SPAR rows average its 3 seeds). "
                                    "Distillation and width alignment were not part of these runs: "
                                    "[ablation_resnet20](ablation_resnet20.md) measures all six modules, those "
                                    "two included, on ResNet-20 over 3 seeds."])
    return t.write(run.path("ablation_fmnist"))


def build_rspar_legacy(rows, sources, run: Run) -> list[str]:
    import json

    from hobs_jax.rspar import report

    t = stability.build("rspar_fmnist", "R-SPAR vs H-OBS allocations on ResNet-56, 3 seeds (run records of 2026-11)",
                        rows, sources=sources, description=[
                            LEGACY, f"Calibration: {records.RSPAR['calibration']}. Fine-tuning: "
                            f"{records.RSPAR['finetune']}. Uniform and global allocations are deterministic "
                            "and were run once (seed 0)."])
    paths = t.write(run.path("rspar_fmnist"))
    for target in ("0.5", "0.333"):  # figures from the search's own records next to them
        rec = run.path(f"rspar_fmnist_allocation_{target}.json")
        if os.path.exists(rec):
            with open(rec) as f:
                data = json.load(f)
            paths += report.save_allocation(run.path(f"rspar_fmnist_allocation_{target}"), data,
                                            f"ResNet-56, kept {target} of the MACs")[1:]
    rec = run.path("rspar_fmnist_curve.json")
    if os.path.exists(rec):
        with open(rec) as f:
            paths += report.save_learning_curve(run.path("rspar_fmnist_curve"), json.load(f),
                                                "R-SPAR search, ResNet-56")[1:]
    return paths


# -- fresh rows on ResNet-20 ----------------------------------------------------------------
SMALL_CALIB = (("calibrate.num_images", 512),)
SENSITIVITY = (Param("damp", "damp", (0.001, 0.01, 0.1), 0.01),
               Param("calibration images", "calibrate.num_images", (128, 256, 512, 2048), 512),
               Param("channels_per_step", "channels_per_step", (1, 2, 4), 1),
               Param("propagate_images", "propagate_images", (128, 256, 512), 512))
FRESH = ("Rows run by this repository's sweep runner (each row one pipeline run: the shipped checkpoint, "
         "calibration, pruning, BN re-estimation on the calibration images, evaluation on the 10,000 test images).")


def sweeps_rows(sweeps: Callable[[], list[Sweep]]) -> Callable[[Run], tuple[list, dict]]:
    """``compute`` of a sweep entry: run (or reuse) every row; the rows name their source."""
    def compute(run: Run):
        rows = [r for s in sweeps() for r in run.sweep(s)]
        sources: dict[str, dict] = {}
        for r in rows:
            if r.get("commit") or r.get("date"):
                key = f"sweep@{(r.get('commit') or 'unknown')[:7]}"
                r["source"] = key
                sources.setdefault(key, {"command": "python -m hobs_jax.experiments.tables (sweep rows, "
                                                    "hobs_jax.experiments.sweep)", "commit": r.get("commit"),
                                         "machine": r.get("machine")})
        return rows, sources
    return compute


def sensitivity_sweeps() -> list[Sweep]:
    variants = tuple(dict.fromkeys(v for p in SENSITIVITY for v in p.variants("hobs")))
    return [Sweep("sensitivity_resnet20", ("resnet20",), variants, (0.5,), overrides=SMALL_CALIB)]


def build_sensitivity(rows, sources, run: Run) -> list[str]:
    t = sensitivity.build("sensitivity_resnet20", "H-OBS sensitivity to its hyperparameters: ResNet-20, half the MACs",
                          rows, SENSITIVITY, description=[FRESH, "Base: H-OBS defaults with 512 calibration images "
                                                          "(the pipeline's default is 2048), seed 0, no fine-tuning."])
    t.add_sources(sources)
    return t.write(run.path("sensitivity_resnet20"))


def stability_sweeps() -> list[Sweep]:
    return [Sweep("stability_resnet20", ("resnet20",), ("hobs", "hobs-uniform", "magnitude-uniform"), (0.5,),
                  seeds=(0, 1, 2), overrides=SMALL_CALIB)]


def build_stability(rows, sources, run: Run) -> list[str]:
    t = stability.build("stability_resnet20", "Stability over seeds: ResNet-20, half the MACs, one-shot", rows,
                        sources=sources, description=[FRESH, "The seed draws the 512 calibration images (the "
                                                      "Hessians, the refit and BN re-estimation all use them); "
                                                      "no fine-tuning."])
    return t.write(run.path("stability_resnet20"))


ABLATION_PAIRS = [Pair("Hessian", "hobs", "hobs_nohessian"),
                  Pair("refit", "hobs", "hobs@propagate=0"),
                  Pair("RL allocation", "rspar", "hobs"),
                  Pair("BN re-estimation", "hobs", "hobs@prune.bn_recalibrate=false"),
                  Pair("distillation", "hobs@finetune.kd.enabled=true", "hobs", "finetuned", budgets=(200,)),
                  Pair("width alignment", "hobs", "hobs@prune.align=off", "latency", latency=True)]


ABLATION_SEEDS = (0, 1, 2)  # every pair's cells are means over these seeds, with the paired spread


def ablation_sweeps() -> list[Sweep]:
    return [Sweep("ablation_resnet20", ("resnet20",), ("hobs", "hobs_nohessian", "hobs@propagate=0", "rspar",
                                                       "hobs@prune.bn_recalibrate=false"), (0.5,),
                  seeds=ABLATION_SEEDS, overrides=SMALL_CALIB),
            Sweep("ablation_resnet20_kd", ("resnet20",), ("hobs", "hobs@finetune.kd.enabled=true"), (0.5,),
                  seeds=ABLATION_SEEDS, budgets=(200,), overrides=SMALL_CALIB),
            Sweep("ablation_resnet20_latency", ("resnet20",), ("hobs", "hobs@prune.align=off"), (0.5,),
                  seeds=ABLATION_SEEDS, benchmark=True, overrides=SMALL_CALIB)]


def build_ablation(rows, sources, run: Run) -> list[str]:
    t = ablation.build("ablation_resnet20", "Module ablation: ResNet-20, half the MACs", rows, ABLATION_PAIRS,
                       sources=sources,
                       description=[FRESH, "512 calibration images; seeds 0, 1 and 2 (the seed draws the "
                                    "calibration images and the fine-tuning order): every cell is the mean over "
                                    "the seeds, 'gain std' the standard deviation of the per-seed difference in "
                                    "points. Distillation: 200 fine-tuning steps with and without KD from the "
                                    "dense network. Width alignment: kept counts allocated in multiples of 8 "
                                    "(XLA's width quantum) vs unaligned, latency in XLA on one core (CPU time per "
                                    "call, measured on a 2-core CPU shared with other jobs)."])
    return t.write(run.path("ablation_resnet20"))


def table1_sweeps() -> list[Sweep]:
    return [Sweep("table1_resnet20", ("resnet20",), ("hobs", "hobs_nohessian", "magnitude-uniform", "udfc-uniform",
                                                     "depgraph-uniform"), (0.5,), budgets=(50, 200), benchmark=True)]


def build_table1(rows, sources, run: Run) -> list[str]:
    t = table1.build("table1_resnet20", "Table 1: ResNet-20 on Fashion-MNIST, half the MACs", rows, sources=sources,
                     description=[FRESH, "2048 calibration images, seed 0; fine-tuning: the pipeline's recipe for "
                                  "200 steps (evaluated at 50 and 200); latency: the benchmark stage, XLA on one "
                                  "core, CPU time per call (on a 2-core CPU shared with other jobs)."])
    return t.write(run.path("table1_resnet20")) + [plot_curves(t, run.path("table1_resnet20_curve.png"))]


def _sweep_entry(name, summary, build, sweeps, quick=False) -> Entry:
    return Entry(name, summary, build, compute=sweeps_rows(sweeps), quick=quick, sweeps=sweeps)


ENTRIES: dict[str, Entry] = {}
for _e in [
    Entry("oneshot_fmnist", "one-shot comparison, run records of 2026-11", build_oneshot,
          legacy=records.oneshot_legacy),
    Entry("rspar_fmnist", "R-SPAR over 3 seeds, run records of 2026-11", build_rspar_legacy,
          legacy=records.rspar_legacy),
    Entry("table1_fmnist", "Table 1 from the one-shot run records", build_table1_legacy, inputs=("oneshot_fmnist",)),
    Entry("ablation_fmnist", "module ablation from the run records", build_ablation_legacy,
          inputs=("oneshot_fmnist", "rspar_fmnist")),
    _sweep_entry("sensitivity_resnet20", "H-OBS hyperparameters, fresh", build_sensitivity, sensitivity_sweeps,
                 quick=True),
    _sweep_entry("stability_resnet20", "3 seeds, paired t-test, fresh", build_stability, stability_sweeps, quick=True),
    _sweep_entry("ablation_resnet20", "module ablation, fresh", build_ablation, ablation_sweeps),
    _sweep_entry("table1_resnet20", "Table 1 with fine-tuning and latency, fresh", build_table1, table1_sweeps),
    *_studies(),
    _ast_entry(),
    _ast_entry("ast_fmnist_bn", "AST grid slice with BN re-estimation (Intel Xeon), row cache"),
    _ast_entry("ast_fmnist_soft", "AST grid slice with soft selection (Intel Xeon), row cache"),
    _ast_entry("ast_fmnist_finetune", "AST on the fine-tuning task, 3 seeds, reducible score (AMD EPYC), row cache"),
    _ast_entry("ast_fmnist_finetune_intensity",
               "AST on the fine-tuning task, 3 seeds, loss + intensity score (AMD EPYC, AVX2), row cache"),
    Entry("bench_runs", "hobs_jax.bench suite runs and the JAX-vs-PyTorch page, from their results.json",
          _bench_build, legacy=lambda data: ([data], {})),
    Entry("block_ell", "Block-ELL SpMM and ResNet-50 end to end, per device, run records", _block_ell_build,
          legacy=lambda data: (data, {})),
    _rspar_variant("rspar_fmnist_v2", "R-SPAR, lbound 0.2, 80 episodes (earlier run), run record"),
    _rspar_variant("rspar_fmnist_lbound0.1", "R-SPAR, lbound 0.1, 80 episodes, run record"),
    _rspar_variant("rspar_fmnist_choice_imitate", "R-SPAR configuration choice (imitation), run record"),
    _rspar_variant("rspar_fmnist_choice_noimitate", "R-SPAR configuration choice (no imitation), run record"),
]:
    ENTRIES[_e.name] = _e
