"""``run(config, workdir)``: the stages in order, each skipped when it already finished
with the same config, timed, and summarized in ``report.md`` + ``summary.json``.

Order of a run, so that a mistake costs nothing and a fault loses little:

1. checks that need no workdir: config values, that the workdir can be created and
   written (nothing is created yet);
2. the workdir is created and locked (:mod:`hobs_jax.pipeline.lock`: a second run stops
   here in one line);
3. checks of the inputs the remaining stages need: the dataset and the initial weights
   (a torch or hobs_jax file), and that finished stages were made with this config; a
   failure here removes what step 2 created, so a mistake leaves no trace;
4. the stages, under :func:`hobs_jax.interrupt.stop_signals`: a stage is recorded
   (``<stage>/stage.json``) only when its function returned; SIGTERM/SIGINT stop the run
   at the next safe point with :class:`~hobs_jax.interrupt.Interrupted`, never recording
   a stage that was cut short, and the same command then resumes.
"""

from __future__ import annotations

import importlib
import time

import jax
import ml_collections

from hobs_jax import faults, interrupt
from hobs_jax.pipeline.config import stages_of, validate
from hobs_jax.pipeline.context import Context, log
from hobs_jax.pipeline.workdir import Workdir, check_usable

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


def preflight(ctx: Context, stages: tuple[str, ...]) -> None:
    """Load what the unfinished stages read from outside the workdir (the dataset, the
    initial weights), so a missing or unreadable input stops the run before it writes
    anything. Both are loaded again (cached, or cheap) by the stages themselves."""
    pending = [s for s in stages if ctx.workdir.done(s) is None]
    if not pending:
        return
    ctx.source  # noqa: B018 - builds (and verifies) the data source
    if "train" in pending and ctx.config.init.kind != "scratch":
        from hobs_jax.pipeline.train_stage import initial_variables

        initial_variables(ctx)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the configured stages in ``workdir``; returns the summary dict.

    Raises:
      ValueError: one line, before anything is written: an invalid config, a workdir that
        cannot be created or is locked by another run (``WorkdirLocked``) or was made
        with a different config, initial weights that do not load.
      hobs_jax.data.DatasetError: the dataset is missing or corrupt (same guarantee).
      hobs_jax.interrupt.Interrupted: SIGTERM/SIGINT; finished stages are recorded,
        training saved its current step; rerun to resume.
      hobs_jax.errors.WriteError: a record or checkpoint could not be written (the
        previous one is intact).
    """
    validate(config, num_devices=jax.device_count())
    stages = stages_of(config)
    wd = Workdir(check_usable(workdir), create=False)
    ctx = Context(config, wd)
    with interrupt.stop_signals():
        wd.open()
        try:
            try:
                wd.check_compatible(config, stages)
                preflight(ctx, stages)
            except BaseException:
                wd.close(remove_if_new=True)
                raise
            return _run_stages(ctx, stages)
        finally:
            wd.close()


def _run_stages(ctx: Context, stages: tuple[str, ...]) -> dict:
    config, wd = ctx.config, ctx.workdir
    if jax.process_index() == 0:
        wd.write_json("config.json", config.to_dict())
    for stage in stages:
        interrupt.check(f"before stage {stage}")
        rec = wd.done(stage)
        if rec is not None:
            log.info("stage %s: already done (%.1f s), skipped", stage, rec["seconds"])
            ctx.results[stage] = rec["outputs"]
            continue
        log.info("stage %s: running", stage)
        t0 = time.time()
        if jax.process_index() == 0:
            wd.start(stage, config)  # what it leaves if stopped belongs to this config
        try:
            faults.point(f"{stage}.start")
            outputs = _stage_fn(stage)(ctx)
        except interrupt.Interrupted as e:
            e.where = f"during stage {stage}" + (f" {e.where}" if e.where else "")
            raise  # not recorded: the next run resumes the stage
        except Exception:
            # Failed (bad input found late, a refused result): the user fixes the config and
            # reruns, so the start mark must not hold the stage to the failed config. A
            # crash or kill -9 never gets here and keeps it.
            if jax.process_index() == 0:
                wd.unstart(stage)
            raise
        seconds = time.time() - t0
        faults.point(f"{stage}.end")
        # The stage function returned: its work is complete, even if a stop signal is
        # pending (it is honoured at the next check, after the record).
        if jax.process_index() == 0:
            wd.finish(stage, config, outputs, seconds, also=tuple(outputs.get("depends_on", ())))
        ctx.results[stage] = outputs
        log.info("stage %s: done in %.1f s", stage, seconds)
        faults.point(f"{stage}.recorded")
    interrupt.check("before the summary (every stage is recorded)")
    from hobs_jax.pipeline.report import write_report

    return write_report(ctx)
