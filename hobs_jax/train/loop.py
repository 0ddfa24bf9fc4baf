"""``fit``: the resumable training loop (data parallel, optional FSDP, KD, regularizers).

One call trains ``model`` from ``variables`` for ``train.steps`` (or epochs) steps:

    result = fit(model, variables, TrainLoader(src, 'train', 128, seed=0), config.train,
                 workdir, eval_data=EvalLoader(src, 'test', 500))
    result.variables, result.metrics['best_val_top1'], result.metrics['stability_score']

What it does per step: build the global batch from each host's slice, run the jitted
step (donated state), check the previous step's loss on the host (one step behind, so
the device never waits for the host; checkpoint/eval/log steps sync), feed the stability
monitor, and periodically log, evaluate (early stopping on top-1) and checkpoint.
With ``train.ast.enabled`` the batches come from an AST :class:`~hobs_jax.train.ast.Selector`
(full batches of selected samples; its state rides in the checkpoint) instead.

Resuming: if ``workdir/checkpoints`` has a checkpoint, everything continues from it
(state, data position, monitor, early-stopping counters) and the result is the same as
an uninterrupted run. SIGTERM saves a checkpoint and returns with
``metrics['stopped'] == 'preempted'``; a caller that goes on to use the result as a
finished run calls ``fit(...).completed()``, which raises
:class:`~hobs_jax.interrupt.Interrupted` for a stopped run instead of handing on a
truncated network.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from hobs_jax.models.depthwise import maybe_fast_depthwise
from hobs_jax.train import mesh as mesh_lib
from hobs_jax.train import stability as stab
from hobs_jax.train.checkpoint import Checkpointer, abstract_like
from hobs_jax.train.config import eval_at, total_steps, validate_train_config
from hobs_jax.train.evaluate import Evaluator
from hobs_jax.train.metrics import MetricsWriter, progress, read_metrics
from hobs_jax.train.optim import make_optimizer, make_schedule
from hobs_jax.train.preemption import Preemption
from hobs_jax.train.state import TrainState
from hobs_jax.train.steps import Teacher, make_train_step, resolve_compute_dtype

log = logging.getLogger(__name__)

Callback = Callable[[str, int, dict], None]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """``variables``: final {'params', 'batch_stats'?} (global arrays); ``metrics``: summary."""

    variables: dict
    metrics: dict

    def completed(self) -> FitResult:
        """This result, if training ran to its last step (or stopped early on purpose:
        early stopping); raises :class:`~hobs_jax.interrupt.Interrupted` if a stop
        signal cut it short. The step is saved either way, so the same call resumes.

        Everything that records a trained network (pipeline stages, studies' rows) goes
        through this: a SIGTERM mid-run must not become a finished, truncated result."""
        if self.metrics.get("stopped") == "preempted":
            from hobs_jax import interrupt

            raise interrupt.Interrupted(interrupt.received() or signal.SIGTERM,
                                        f"at step {self.metrics['steps']} of {self.metrics['total_steps']} "
                                        "(checkpoint saved)")
        return self


def fit(model: Any, variables: dict, train_data: Any, config: ml_collections.ConfigDict,
        workdir: str, *, eval_data: Iterable[dict] | None = None,
        teacher: Teacher | None = None,
        extra_transform: optax.GradientTransformation | None = None,
        extra_loss: Callable[[Any], jax.Array] | None = None,
        callbacks: Sequence[Callback] = (), mesh: Mesh | None = None) -> FitResult:
    """Trains ``model``; resumable, preemptible, stability-monitored.

    Args:
      model: Flax module (zoo contract: ``apply(variables, x, train=..., mutable=...,
        rngs=...)``).
      variables: initial {'params', 'batch_stats'?} (ignored when resuming).
      train_data: a :class:`hobs_jax.data.TrainLoader` (or anything with ``__next__``,
        ``batch_size``, ``steps_per_epoch``, ``position()`` and ``restore(position)``).
      config: the ``train`` section (:func:`hobs_jax.train.get_train_config`).
      workdir: checkpoints/, metrics.jsonl and tensorboard/ go here.
      eval_data: an :class:`hobs_jax.data.EvalLoader` for validation and early stopping.
      teacher: distill from it when ``config.kd.enabled``.
      extra_transform: an optax transformation applied to gradients before the optimizer.
      extra_loss: ``f(params) -> scalar`` added to the loss.
      callbacks: ``cb(kind, step, record)`` for every record written (kinds: 'train',
        'eval', 'event', 'resume', 'stop').
      mesh: default: every device on a ('data',) mesh.
    Returns:
      FitResult; metrics has steps, steps_run, seconds, images_per_s, train_loss,
      val_loss/val_top1/val_top5 (final eval), best_val_top1, best_step, stopped
      ('' | 'early_stopping' | 'preempted'), resumed_from, and the stability summary
      (stability_score, event_free, smoothness, nan_events, spike_events, lr_scale).
    Raises:
      ValueError: bad config (before any compute).
      StabilityError: too many consecutive NaN/spike events.
    """
    t_start = time.time()
    c = config
    mesh = mesh or mesh_lib.make_mesh()
    validate_train_config(c, num_devices=mesh.size, process_count=jax.process_count(),
                          labeled=getattr(train_data, "labeled", True))
    if train_data.batch_size != c.batch_size:
        raise ValueError(f"train.batch_size={c.batch_size} but the train loader's batch_size is "
                         f"{train_data.batch_size}")
    eval_batch = getattr(eval_data, "batch_size", None)
    if eval_batch is not None and eval_batch % mesh.size:
        raise ValueError(f"eval loader batch_size={eval_batch} is not divisible by the device "
                         f"count {mesh.size}")
    if c.kd.enabled and teacher is None:
        raise ValueError("train.kd.enabled=True needs a teacher (fit(..., teacher=Teacher(...)))")
    total = total_steps(c, train_data.steps_per_epoch)
    # The steps below run the model through this apply function: with train.fast_depthwise
    # its depthwise convs are shifted-slice sums (hobs_jax.models.depthwise), same numbers.
    apply_fn = maybe_fast_depthwise(model.apply, c.fast_depthwise)
    if isinstance(teacher, Teacher):
        teacher = teacher._replace(apply_fn=maybe_fast_depthwise(teacher.apply_fn,
                                                                 c.fast_depthwise))
    selector = None
    if c.ast.enabled:  # AST sample selection: batches of selected samples only
        from hobs_jax.train.ast import Selector

        selector = Selector(c.ast, train_data, apply_fn, mesh=mesh, full_steps=total,
                            seed=c.seed, compute_dtype=resolve_compute_dtype(c.mixed_precision),
                            workdir=workdir, record=lambda *args: record(*args))
        total = selector.planned
    tx = make_optimizer(c, total, extra_transform)
    scfg = stab.StabilityConfig.from_config(c.stability)
    rep = mesh_lib.replicated(mesh)

    make_state = lambda v: TrainState.create(v, tx, c.seed)
    if "params" not in variables:
        raise ValueError(f"variables has no 'params' (keys: {sorted(variables)})")
    abstract = jax.eval_shape(make_state, {k: v for k, v in variables.items()
                                           if k in ("params", "batch_stats")})
    shardings = mesh_lib.state_shardings(abstract, mesh, fsdp=c.mesh.fsdp,
                                         min_size=c.mesh.fsdp_min_size)
    target = abstract_like(abstract, shardings)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.checkpoint.keep,
                        async_save=c.checkpoint.async_save)
    writer = MetricsWriter(workdir, tensorboard=c.tensorboard)
    # With early stopping, the state of the best evaluation is kept (one checkpoint, written
    # when an evaluation improves) and returned at the end instead of the last state.
    keep_best = bool(c.early_stopping.patience) and bool(c.early_stopping.restore_best) \
        and eval_data is not None
    best_ckpt = (Checkpointer(os.path.join(workdir, "best"), keep=1, async_save=False)
                 if keep_best else None)

    def record(kind: str, step: int, values: dict) -> None:
        writer.write(kind, step, values)
        for cb in callbacks:
            cb(kind, step, dict(values))

    monitor = stab.StabilityState()
    early = {"best_val_top1": -1.0, "best_step": -1, "bad_evals": 0}
    restored = ckpt.restore(target)
    resumed_from = None
    if restored is not None:
        resumed_from, state, meta = restored
        train_data.restore(meta["data"])
        monitor = stab.StabilityState.from_dict(meta["stability"])
        early = dict(meta["early_stopping"])
        if selector is not None:
            selector.load_state_dict(meta.get("ast"))
        if meta.get("total_steps") != total:
            log.warning("resuming a run planned for %s steps with %d steps: the lr schedule "
                        "changes", meta.get("total_steps"), total)
        record("resume", resumed_from, {"from_step": resumed_from, **meta["data"]})
    else:
        var_shardings = {"params": shardings.params}
        if "batch_stats" in variables:
            var_shardings["batch_stats"] = shardings.batch_stats
        placed = mesh_lib.put_global({k: variables[k] for k in var_shardings}, var_shardings)
        state = jax.jit(make_state, out_shardings=shardings)(placed)

    def checkpoint_meta() -> dict:
        out = {"data": train_data.position().to_dict(), "stability": monitor.to_dict(),
               "early_stopping": early, "total_steps": total}
        if selector is not None:
            out["ast"] = selector.state_dict()
        return out

    if restored is None:
        ckpt.save(0, state, checkpoint_meta())  # the rollback target before the first periodic save

    step_fn = make_train_step(
        maybe_fast_depthwise(selector.train_apply_fn(model.apply), c.fast_depthwise)
        if selector else apply_fn, tx, mesh=mesh,
        state_shardings=shardings,
        label_smoothing=c.label_smoothing, compute_dtype=resolve_compute_dtype(
            c.mixed_precision), teacher=teacher if c.kd.enabled else None,
        kd_temperature=c.kd.temperature, kd_alpha=c.kd.alpha, extra_loss=extra_loss,
        lr_schedule=make_schedule(c, total),
        example_fn=selector.example_fn() if selector else None)
    teacher_vars = (mesh_lib.put_global(teacher.variables, jax.tree.map(
        lambda _: rep, teacher.variables)) if c.kd.enabled and teacher is not None else {})
    evaluator = (Evaluator(model.apply, mesh, c.mixed_precision, fast_depthwise=c.fast_depthwise)
                 if eval_data is not None else None)
    eval_every = c.eval_every or (selector.steps_per_data_epoch if selector
                                  else train_data.steps_per_epoch)
    extra_evals = eval_at(c)
    ckpt_every = c.checkpoint.every_steps

    step = int(mesh_lib.host_value(state.step))
    start_step = step
    window = {"loss": 0.0, "accuracy": 0.0, "n": 0, "t": time.time(), "steps": 0, "lr": 0.0}
    # A resumed run's summary starts from the last train record it wrote at or before the
    # step it resumed from: a rerun of a finished fit (0 steps) still reports its loss.
    last_train: dict = next((r for r in reversed(read_metrics(workdir, "train")) if r["step"] <= step), {}) \
        if step > 0 else {}
    last_eval: dict = {}
    last_eval_step = -1
    pending = None
    stopped = ""

    def handle(at_step: int, metrics: dict) -> str:
        """Feeds one step's metrics to the monitor; returns its event."""
        nonlocal monitor
        m = {k: mesh_lib.host_value(v) for k, v in metrics.items()}
        monitor, event = stab.observe(monitor, at_step, float(m["loss"]), bool(m["finite"]), scfg)
        if event == "ok":
            window["loss"] += float(m["loss"])
            window["accuracy"] += float(m["accuracy"])
            window["n"] += 1
            window["lr"] = float(m["lr"])
        else:
            log.warning("stability event at step %d: %s", at_step, monitor.last_event)
            record("event", at_step, {"event": event, "loss": float(m["loss"]),
                                      "lr_scale": monitor.lr_scale, "detail": monitor.last_event})
        stab.check(monitor, scfg)
        return event

    def rollback() -> None:
        """Restores the newest checkpoint, keeping the data position and the new lr scale."""
        nonlocal state, step
        restored = ckpt.restore(target)
        assert restored is not None, "rollback before the step-0 checkpoint"
        back_step, state, _ = restored
        state = state.replace(lr_scale=mesh_lib.put_global(np.float32(monitor.lr_scale), rep))
        record("event", step, {"event": "rollback", "to_step": back_step,
                               "lr_scale": monitor.lr_scale})
        step = back_step

    def drain() -> bool:
        """Handles the pending (one-step-behind) metrics; True if that caused a rollback."""
        nonlocal pending
        if pending is None:
            return False
        at_step, metrics = pending
        pending = None
        if handle(at_step, metrics) == "spike":
            rollback()
            return True
        return False

    def write_train_record() -> None:
        nonlocal last_train
        elapsed = time.time() - window["t"]
        n = max(window["n"], 1)
        last_train = {"loss": window["loss"] / n, "accuracy": window["accuracy"] / n,
                      "lr": window["lr"],
                      "images_per_s": window["steps"] * c.batch_size / max(elapsed, 1e-9),
                      "epoch": step / train_data.steps_per_epoch,
                      "nan_events": monitor.nan_events, "spike_events": monitor.spike_events}
        record("train", step, last_train)
        window.update(loss=0.0, accuracy=0.0, n=0, t=time.time(), steps=0)

    def run_eval() -> None:
        nonlocal last_eval, last_eval_step
        assert evaluator is not None and eval_data is not None
        last_eval = evaluator(state.variables(), eval_data, desc=f"eval@{step}",
                              show_progress=c.progress)
        last_eval_step = step
        if last_eval["top1"] > early["best_val_top1"] + c.early_stopping.min_delta:
            early.update(best_val_top1=last_eval["top1"], best_step=step, bad_evals=0)
            if best_ckpt is not None:
                best_ckpt.save(step, state, {"val": last_eval})
        else:
            early["bad_evals"] += 1
        record("eval", step, {**last_eval, "best_val_top1": early["best_val_top1"]})

    try:
        with Preemption() as preemption, progress(total=total, initial=step, desc="train",
                                                  enabled=c.progress) as bar:
            while step < total:
                if c.early_stopping.patience and early["bad_evals"] >= c.early_stopping.patience:
                    stopped = "early_stopping"
                    break
                if preemption.requested():
                    stopped = "preempted"
                    break
                batch = (selector.next_batch(state) if selector
                         else mesh_lib.global_batch(next(train_data), mesh))
                state, metrics = step_fn(state, batch, teacher_vars)
                step += 1
                if selector:
                    selector.after_step(step, metrics)
                window["steps"] += 1
                if drain():
                    bar.n = step
                    continue
                due_log = step % c.log_every == 0
                due_eval = evaluator is not None and (step % eval_every == 0 or step in extra_evals)
                due_ckpt = bool(ckpt_every) and step % ckpt_every == 0
                if due_log or due_eval or due_ckpt or step == total:
                    pending = (step, metrics)
                    if drain():
                        bar.n = step
                        continue
                    if due_log:
                        write_train_record()
                        if selector:
                            record("ast", step, selector.log_record())
                        bar.set_postfix(loss=f"{last_train['loss']:.4f}", refresh=False)
                    elif step == total and window["n"]:
                        write_train_record()  # the last partial window: the summary's train_loss
                    if due_eval:
                        run_eval()
                    if due_ckpt or step == total:
                        ckpt.save(step, state, checkpoint_meta())
                else:
                    pending = (step, metrics)
                bar.update(step - bar.n)
            drain()
            if stopped:
                ckpt.save(step, state, checkpoint_meta())
                record("stop", step, {"reason": stopped})
    except BaseException:
        ckpt.close()  # let in-flight async saves finish before the error propagates
        if best_ckpt is not None:
            best_ckpt.close()
        writer.close()
        raise
    # AST trained on a biased subset: its BN running statistics are re-estimated on a
    # uniform sample before the final evaluation (train.ast.bn_reestimate).
    bn_images = int(c.ast.bn_reestimate) if selector is not None and stopped != "preempted" else 0
    bn_images = bn_images if jax.tree.leaves(state.batch_stats) else 0

    def reestimate_bn(st):
        from hobs_jax.stats import reestimate_bn as reestimate

        t0 = time.time()
        assert selector is not None
        v = reestimate(model, st.variables(), selector.bn_batches(bn_images),
                       workers=1 if jax.process_count() > 1 else None)
        record("event", step, {"event": "bn_reestimate", "images": bn_images,
                               "seconds": time.time() - t0})
        return st.replace(batch_stats=mesh_lib.put_global(v["batch_stats"], shardings.batch_stats))

    if bn_images:
        state = reestimate_bn(state)
        last_eval_step = -1  # evaluate the re-estimated network
    if evaluator is not None and last_eval_step != step and stopped != "preempted":
        run_eval()
    ckpt.close()
    restored_best = None
    if best_ckpt is not None:
        best = best_ckpt.restore(target) if early["best_step"] not in (-1, step) else None
        best_ckpt.close()
        if best is not None:
            restored_best, state, best_meta = best
            last_eval = dict(best_meta["val"])
            if bn_images:
                state = reestimate_bn(state)
                if evaluator is not None and eval_data is not None:
                    last_eval = evaluator(state.variables(), eval_data, desc=f"eval@{restored_best}",
                                          show_progress=c.progress)
            log.info("early stopping: returning the best evaluation's variables (step %d, "
                     "top-1 %.4f) instead of step %d's", restored_best, last_eval["top1"], step)
    seconds = time.time() - t_start
    steps_run = step - start_step
    metrics_out = {
        "steps": step, "total_steps": total, "steps_run": steps_run, "seconds": seconds,
        "images_per_s": steps_run * c.batch_size / max(seconds, 1e-9),
        "train_loss": last_train.get("loss", float("nan")), "stopped": stopped,
        "resumed_from": resumed_from, "best_val_top1": early["best_val_top1"],
        "best_step": early["best_step"],
        "restored_best": restored_best,
        **{f"val_{k}": v for k, v in last_eval.items() if k != "count"},
        **stab.summary(monitor),
    }
    if selector is not None:
        metrics_out["ast"] = dict(selector.finish(), bn_reestimated_images=bn_images)
    writer.write("summary", step, {k: v for k, v in metrics_out.items() if v is not None})
    writer.close()
    return FitResult(variables=state.variables(), metrics=metrics_out)
