"""``run(config, workdir)``: the stages in order, each skipped when it already finished
with the same config, timed, and summarized in ``report.md`` + ``summary.json``."""

from __future__ import annotations

import importlib
import time

import jax
import ml_collections

from hobs_jax.pipeline.config import stages_of, validate
from hobs_jax.pipeline.context import Context, log
from hobs_jax.pipeline.workdir import Workdir

_MODULES = {
    "train": "hobs_jax.pipeline.train_stage",
    "calibrate": "hobs_jax.pipeline.prune_stage",
    "prune": "hobs_jax.pipeline.prune_stage",
    "finetune": "hobs_jax.pipeline.finetune_stage",
    "evaluate": "hobs_jax.pipeline.evaluate_stage",
    "benchmark": "hobs_jax.pipeline.benchmark_stage",
    "export": "hobs_jax.pipeline.export_stage",
}


def _stage_fn(stage: str):
    module = importlib.import_module(_MODULES[stage])
    return getattr(module, "run_calibrate" if stage == "calibrate" else "run")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the configured stages in ``workdir``; returns the summary dict.

    Raises ``ValueError`` (one line) for an invalid config or a workdir made with a
    different config, before any compute.
    """
    validate(config, num_devices=jax.device_count())
    stages = stages_of(config)
    wd = Workdir(workdir)
    wd.check_compatible(config, stages)
    if jax.process_index() == 0:
        wd.write_json("config.json", config.to_dict())
    ctx = Context(config, wd)
    for stage in stages:
        rec = wd.done(stage)
        if rec is not None:
            log.info("stage %s: already done (%.1f s), skipped", stage, rec["seconds"])
            ctx.results[stage] = rec["outputs"]
            continue
        log.info("stage %s: running", stage)
        t0 = time.time()
        outputs = _stage_fn(stage)(ctx)
        seconds = time.time() - t0
        if jax.process_index() == 0:
            wd.finish(stage, config, outputs, seconds)
        ctx.results[stage] = outputs
        log.info("stage %s: done in %.1f s", stage, seconds)
    from hobs_jax.pipeline.report import write_report

    return write_report(ctx)
