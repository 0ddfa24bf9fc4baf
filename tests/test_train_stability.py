"""Stability monitor: NaN skips, spike rollback + lr halving, score formula, give-up."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from hobs_jax.data import TrainLoader, get_source
from hobs_jax.train import (
    StabilityConfig,
    StabilityError,
    StabilityState,
    fit,
    get_train_config,
    observe,
    read_metrics,
    summary,
)
from hobs_jax.train.stability import check
from tests._tiny import TinyCNN, TinyMLP, enable_compile_cache, init_tiny

enable_compile_cache()
CFG = StabilityConfig(spike_factor=3.0, window=4, max_consecutive_events=3, lr_decay=0.5)


def run(losses, cfg=CFG):
    state, events = StabilityState(), []
    for i, loss in enumerate(losses):
        state, ev = observe(state, i + 1, loss, math.isfinite(loss), cfg)
        events.append(ev)
    return state, events


def test_spike_needs_a_full_window_and_halves_the_lr_scale():
    state, events = run([1.0, 1.0, 10.0, 1.0, 1.0, 1.0, 3.5, 1.0])
    assert events == ["ok", "ok", "ok", "ok", "ok", "ok", "spike", "ok"]  # 10.0: window not full
    assert state.spike_events == 1 and state.lr_scale == 0.5 and state.consecutive == 0
    assert 3.5 not in state.window and len(state.window) == 4


def test_nan_is_an_event_and_m_consecutive_events_fail_with_one_line():
    state, events = run([1.0, float("nan"), 1.0, float("inf"), float("nan")])
    assert events == ["ok", "nan", "ok", "nan", "nan"] and state.nan_events == 3
    assert state.consecutive == 2
    check(state, CFG)  # 2 < 3: keep going
    state, _ = observe(state, 6, float("nan"), False, CFG)
    with pytest.raises(StabilityError, match="3 consecutive events") as e:
        check(state, CFG)
    assert '\n' not in str(e.value) and "step 6" in str(e.value)


def test_score_formula():
    state, _ = run([1.0, math.e, 1.0, float("nan")])
    s = summary(state)
    assert s["event_free"] == pytest.approx(0.75)
    assert s["smoothness"] == pytest.approx(math.exp(-1.0))  # mean |d log L| = 1
    assert s["stability_score"] == pytest.approx(0.75 * math.exp(-1.0))


def test_state_round_trips_through_json():
    state, _ = run([1.0, 2.0, float("nan"), 1.5])
    assert StabilityState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


class Inject:
    """Wraps a TrainLoader; replaces the images of chosen global steps."""

    def __init__(self, inner, at, value):
        self.inner, self.at, self.value = inner, set(at), value
        self.batch_size, self.steps_per_epoch = inner.batch_size, inner.steps_per_epoch
        self.n = 0

    def position(self):
        return self.inner.position()

    def restore(self, pos):
        self.inner.restore(pos)

    def __next__(self):
        batch = next(self.inner)
        self.n += 1
        if self.n in self.at:
            batch = dict(batch, image=np.full_like(batch["image"], self.value))
        return batch


SRC = get_source("synthetic", image_shape=(8, 8, 1), num_classes=4, train_size=256,
                 test_size=32)


def small_config(steps):
    c = get_train_config()
    c.steps, c.batch_size, c.lr, c.log_every = steps, 16, 0.05, 1
    c.checkpoint.every_steps, c.checkpoint.async_save = 5, False
    c.stability.window, c.stability.max_consecutive_events = 5, 3
    c.progress, c.tensorboard = False, False
    return c


def test_fit_skips_nan_batches_and_counts_them(tmp_path):
    model = TinyCNN(num_classes=4)
    data = Inject(TrainLoader(SRC, "train", 16, 0), at=[4, 9], value=np.nan)
    c = small_config(12)
    c.log_every = 3  # metrics are read one step behind between log/checkpoint steps
    r = fit(model, init_tiny(model, (8, 8, 1)), data, c, str(tmp_path))
    assert r.metrics["nan_events"] == 2 and r.metrics["spike_events"] == 0
    assert r.metrics["event_free"] == pytest.approx(10 / 12)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(r.variables))
    events = read_metrics(str(tmp_path), "event")
    assert [e["step"] for e in events] == [4, 9]


def test_fit_rolls_back_on_a_spike_and_halves_the_lr(tmp_path):
    model = TinyMLP(num_classes=4)  # no BatchNorm: huge inputs give a huge loss
    data = Inject(TrainLoader(SRC, "train", 16, 0), at=[13], value=1e4)
    r = fit(model, init_tiny(model, (8, 8, 1)), data, small_config(16), str(tmp_path))
    assert r.metrics["spike_events"] == 1 and r.metrics["lr_scale"] == 0.5
    assert r.metrics["steps"] == 16
    kinds = [(e["event"], e.get("to_step")) for e in read_metrics(str(tmp_path), "event")]
    assert kinds == [("spike", None), ("rollback", 10)]
    # the data moved on: 16 steps of training consumed 16 + (13 - 10) batches
    assert data.n == 19


def test_fit_gives_up_after_m_consecutive_events(tmp_path):
    model = TinyCNN(num_classes=4)
    data = Inject(TrainLoader(SRC, "train", 16, 0), at=range(6, 100), value=np.nan)
    with pytest.raises(StabilityError, match=r"3 consecutive events.*step 8"):
        fit(model, init_tiny(model, (8, 8, 1)), data, small_config(30), str(tmp_path))


def test_minibatch_noise_at_a_low_loss_is_not_a_spike_but_a_divergence_is():
    """Batch losses of a fine-tuned network near 0.07 spread by about 0.4 in log space; a
    batch at 5x the median is noise there (the rule before spike_sigmas rolled DepGraph's
    sparse phase back on such batches), while a jump to chance-level loss is a spike."""
    cfg = StabilityConfig(spike_factor=3.0, window=50, max_consecutive_events=5, lr_decay=0.5)
    rng = np.random.default_rng(0)
    window = list(0.07 * np.exp(0.4 * rng.standard_normal(50)))
    state, events = run(window, cfg)
    assert events.count("ok") == 50
    state, ev = observe(state, 51, 0.07 * 5, True, cfg)
    assert ev == "ok" and state.lr_scale == 1.0
    state, ev = observe(state, 52, 2.3, True, cfg)  # log(2.3 / 0.07) = 3.5 > 6 x ~0.4
    assert ev == "spike" and state.lr_scale == 0.5
    # the old rule alone (spike_sigmas=0) took the noisy batch for a spike
    state, _ = run(window, dataclasses.replace(cfg, spike_sigmas=0.0))
    assert observe(state, 51, 0.07 * 5, True, dataclasses.replace(cfg, spike_sigmas=0.0))[1] == "spike"
