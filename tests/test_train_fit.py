"""fit/evaluate end to end on the tiny CNN: learning, records, early stopping, KD, resume."""

import glob
import os

import jax
import numpy as np
import pytest

from hobs_jax.data import EvalLoader, TrainLoader, get_source
from hobs_jax.train import Teacher, evaluate, fit, get_train_config, read_metrics
from tests._tiny import TinyCNN, TinyMLP, enable_compile_cache, init_tiny

enable_compile_cache()
SRC = get_source("synthetic", image_shape=(8, 8, 1), num_classes=8, train_size=512,
                 test_size=100)


def config(steps=40, **kw):
    c = get_train_config()
    c.steps, c.batch_size, c.eval_batch_size, c.lr, c.log_every = steps, 32, 32, 0.1, 10
    c.eval_every, c.checkpoint.every_steps = 20, 20
    c.progress, c.tensorboard = False, False
    for k, v in kw.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def loaders():
    return TrainLoader(SRC, "train", 32, seed=0), EvalLoader(SRC, "test", 32)


def test_fit_learns_and_writes_records(tmp_path):
    model = TinyCNN(num_classes=8)
    train, test = loaders()
    seen = []
    r = fit(model, init_tiny(model, (8, 8, 1)), train, config(tensorboard=True), str(tmp_path),
            eval_data=test, callbacks=[lambda kind, step, rec: seen.append((kind, step))])
    m = r.metrics
    assert m["steps"] == m["steps_run"] == 40 and m["stopped"] == ""
    assert m["val_top1"] > 0.5 and m["best_val_top1"] >= m["val_top1"]  # chance: 0.125
    assert 0 < m["stability_score"] <= 1 and m["nan_events"] == m["spike_events"] == 0
    assert m["val_top5"] >= m["val_top1"] and m["images_per_s"] > 0
    assert [s for k, s in seen if k == "train"] == [10, 20, 30, 40]
    assert [s for k, s in seen if k == "eval"] == [20, 40]
    lr_end = read_metrics(str(tmp_path), "train")[-1]["lr"]  # lr used by step 40 (index 39)
    np.testing.assert_allclose(lr_end, 0.1 * 0.5 * (1 + np.cos(np.pi * 35 / 36)), rtol=1e-5)
    evals = read_metrics(str(tmp_path), "eval")
    assert [e["count"] for e in evals] == [100, 100]
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "20", "40"]
    # evaluate() on the returned variables agrees with fit's last evaluation
    again = evaluate(model, r.variables, test)
    np.testing.assert_allclose(again["top1"], m["val_top1"])
    np.testing.assert_allclose(again["loss"], m["val_loss"], rtol=1e-5)
    # and with a direct model.apply over the whole test split
    x, y = SRC.batch("test", np.arange(100), train=False)
    logits = model.apply(jax.device_get(r.variables), x)
    np.testing.assert_allclose(again["top1"], np.mean(np.argmax(logits, -1) == y), atol=1e-6)
    # a second call finds the finished run and trains nothing more
    r2 = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(SRC, "train", 32, seed=0),
             config(), str(tmp_path), eval_data=test)
    assert r2.metrics["resumed_from"] == 40 and r2.metrics["steps_run"] == 0
    assert r2.metrics["train_loss"] == m["train_loss"]  # the finished run's last logged loss, not NaN
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(r.variables),
                 jax.device_get(r2.variables))


def test_the_last_partial_log_window_is_recorded_and_is_the_summarys_train_loss(tmp_path):
    """A fit shorter than log_every, or ending between two logs, still reports the loss of
    its last steps (a 23-step round of a training-time method reported NaN)."""
    model = TinyCNN(num_classes=8)
    for steps in (5, 15):
        train, _ = loaders()
        seen: list = []
        r = fit(model, init_tiny(model, (8, 8, 1)), train, config(steps=steps, eval_every=0),
                str(tmp_path / str(steps)), callbacks=[lambda *rec, seen=seen: seen.append(rec)])
        logged = [(s, rec) for k, s, rec in seen if k == "train"]
        assert [s for s, _ in logged] == ([5] if steps == 5 else [10, 15])
        assert np.isfinite(r.metrics["train_loss"]) and r.metrics["train_loss"] == logged[-1][1]["loss"]


def test_eval_steps_give_a_curve_from_one_run(tmp_path):
    """``eval_steps`` adds evaluations at those steps of one schedule; a bad list is refused."""
    model = TinyCNN(num_classes=8)
    train, test = loaders()
    fit(model, init_tiny(model, (8, 8, 1)), train, config(steps=12, eval_every=100, eval_steps="3,7"),
        str(tmp_path), eval_data=test)
    assert [e["step"] for e in read_metrics(str(tmp_path), "eval")] == [3, 7, 12]
    with pytest.raises(ValueError, match=r"train.eval_steps='3,x': comma-separated positive ints"):
        fit(model, init_tiny(model, (8, 8, 1)), train, config(eval_steps="3,x"), str(tmp_path / "b"))


def test_early_stopping_on_validation_accuracy(tmp_path):
    model = TinyCNN(num_classes=8)
    train, test = loaders()
    c = config(steps=100, eval_every=5, schedule="constant", warmup_fraction=0.0,
               **{"early_stopping.patience": 2, "early_stopping.min_delta": 1.0})
    r = fit(model, init_tiny(model, (8, 8, 1)), train, c, str(tmp_path), eval_data=test)
    # first eval sets the best; no later eval can beat it by 1.0: stop after 2 more
    assert r.metrics["stopped"] == "early_stopping" and r.metrics["steps"] == 15
    assert r.metrics["best_step"] == 5 and r.metrics["restored_best"] == 5
    # The returned variables are step 5's (restore_best), as a 5-step run gives them.
    train, test = loaders()  # fresh iterators: the same batches again
    r5 = fit(model, init_tiny(model, (8, 8, 1)), train, config(steps=5, eval_every=5, schedule="constant",
                                                           warmup_fraction=0.0),
             str(tmp_path / "five"), eval_data=test)
    for a, b in zip(jax.tree.leaves(r.variables), jax.tree.leaves(r5.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert r.metrics["val_top1"] == r5.metrics["val_top1"]
    c.early_stopping.restore_best = False
    train, test = loaders()
    last = fit(model, init_tiny(model, (8, 8, 1)), train, c, str(tmp_path / "last"), eval_data=test)
    assert last.metrics["restored_best"] is None and last.metrics["steps"] == 15


def test_distillation_and_adamw_on_a_model_without_batch_stats(tmp_path):
    model = TinyMLP(num_classes=8)
    teacher_vars = init_tiny(model, (8, 8, 1), seed=1)
    train, test = loaders()
    c = config(steps=10, optimizer="adamw", lr=3e-3, eval_every=10,
               **{"kd.enabled": True, "kd.alpha": 0.5, "kd.temperature": 2.0})
    r = fit(model, init_tiny(model, (8, 8, 1)), train, c, str(tmp_path), eval_data=test,
            teacher=Teacher(model.apply, teacher_vars))
    assert r.metrics["steps"] == 10 and set(r.variables) == {"params"}
    assert np.isfinite(r.metrics["train_loss"])


def test_bad_fit_arguments_fail_before_compute(tmp_path):
    model = TinyCNN(num_classes=8)
    train, _ = loaders()
    with pytest.raises(ValueError, match=r"train.batch_size=64 but the train loader"):
        fit(model, {}, train, config(batch_size=64), str(tmp_path))
    with pytest.raises(ValueError, match=r"kd.enabled=True needs a teacher"):
        fit(model, {}, train, config(**{"kd.enabled": True}), str(tmp_path))
    with pytest.raises(ValueError, match=r"train.lr=0.0: must be > 0"):
        fit(model, {}, train, config(lr=0), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_stopped_run_is_not_completed_and_its_resumed_curve_keeps_every_point(tmp_path):
    """SIGTERM mid-run: fit saves and returns, ``completed()`` refuses the truncated result
    (Interrupted, naming the step), and after the same call resumes, ``eval_curve`` has the
    points of both calls, equal to an uninterrupted run's; ``fit_seconds`` counts both calls."""
    import signal

    from hobs_jax.interrupt import Interrupted
    from hobs_jax.train import eval_curve, fit_seconds

    model = TinyCNN(num_classes=8)
    c = config(steps=30, log_every=5, eval_every=100, eval_steps="5,15", **{"checkpoint.every_steps": 10})

    def run(workdir, callbacks=()):
        train, test = loaders()
        return fit(model, init_tiny(model, (8, 8, 1)), train, c, str(workdir), eval_data=test, callbacks=callbacks)

    whole = run(tmp_path / "whole").completed()

    def stop_at_20(kind, step, record):
        if kind == "train" and step == 20:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = run(tmp_path / "cut", [stop_at_20])
    assert stopped.metrics["stopped"] == "preempted" and stopped.metrics["steps"] < 30
    with pytest.raises(Interrupted, match=r"by SIGTERM at step \d+ of 30 \(checkpoint saved\)"):
        stopped.completed()
    assert eval_curve(str(tmp_path / "cut")).keys() == {5, 15}
    resumed = run(tmp_path / "cut").completed()
    assert resumed.metrics["resumed_from"] is not None
    assert eval_curve(str(tmp_path / "cut")) == eval_curve(str(tmp_path / "whole"))
    assert sorted(eval_curve(str(tmp_path / "whole"))) == [5, 15, 30]
    assert len(read_metrics(str(tmp_path / "cut"), "summary")) == 2
    assert fit_seconds(str(tmp_path / "cut")) == pytest.approx(
        stopped.metrics["seconds"] + resumed.metrics["seconds"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.variables), jax.device_get(resumed.variables))
