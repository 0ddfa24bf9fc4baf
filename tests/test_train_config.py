"""train config: defaults, one-line validation errors, schedule, weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hobs_jax.train import (
    decay_mask,
    get_train_config,
    make_optimizer,
    make_schedule,
    total_steps,
    validate_train_config,
)


def test_defaults_validate_and_are_locked():
    c = get_train_config()
    validate_train_config(c, num_devices=1, process_count=1)
    assert (c.optimizer, c.warmup_fraction, c.schedule, c.mixed_precision) == (
        "sgd", 0.1, "cosine", "auto")
    with pytest.raises(AttributeError):
        c.learning_rate = 0.1  # typo of lr: the config is locked


@pytest.mark.parametrize("key,value,match", [
    ("lr", -0.1, r'train\.lr=-0\.1: must be > 0'),
    ("optimizer", "adam", r"train\.optimizer='adam': unknown"),
    ("batch_size", 30, r'train\.batch_size=30: not divisible by the device count 4'),
    ("momentum", 1.0, r'train\.momentum=1\.0'),
    ("warmup_fraction", 1.0, r'train\.warmup_fraction=1\.0'),
    ("mixed_precision", "fp16", r"train\.mixed_precision='fp16'"),
    ("fast_depthwise", "yes", r"train\.fast_depthwise='yes': unknown; use one of"),
    ("label_smoothing", -0.1, r'train\.label_smoothing=-0\.1'),
    ("stability.window", 1, r'train\.stability\.window=1'),
    ("stability.spike_factor", 1.0, r'train\.stability\.spike_factor=1\.0'),
    ("kd.alpha", 2.0, r'train\.kd\.alpha=2\.0'),
    ("checkpoint.keep", 0, r'train\.checkpoint\.keep=0'),
    ("lr", float("nan"), r'train\.lr=nan: must be a finite number'),
])
def test_bad_values_raise_one_line_errors_naming_the_key(key, value, match):
    c = get_train_config()
    c.batch_size = 32
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match) as e:
        validate_train_config(c, num_devices=4)
    assert '\n' not in str(e.value)


def test_missing_key_is_reported():
    c = get_train_config().to_dict()
    del c["stability"]["window"]
    import ml_collections
    with pytest.raises(ValueError, match=r'train\.stability\.window is missing'):
        validate_train_config(ml_collections.ConfigDict(c))


def test_total_steps_from_steps_or_epochs():
    c = get_train_config()
    c.epochs = 2.5
    assert total_steps(c, 10) == 25
    c.steps = 7
    assert total_steps(c, 10) == 7


def test_schedule_is_10pct_linear_warmup_then_cosine():
    c = get_train_config()
    c.lr = 0.4
    s = make_schedule(c, 100)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 0.4, rtol=1e-6)
    np.testing.assert_allclose(float(s(55)), 0.2, rtol=1e-5)  # half-way down the cosine
    assert float(s(100)) < 1e-6


def test_weight_decay_skips_norm_params_and_biases():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4),
                                                                "bias": jnp.ones(4)}}
    assert decay_mask(params) == {"conv": {"kernel": True}, "bn": {"scale": False,
                                                                  "bias": False}}
    for opt in ("sgd", "adamw"):
        c = get_train_config()
        c.optimizer, c.weight_decay, c.warmup_fraction, c.schedule = opt, 0.1, 0.0, "constant"
        tx = make_optimizer(c, 10)
        zero = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        assert float(new["conv"]["kernel"][0, 0, 0, 0]) < 1.0  # decayed
        assert float(new["bn"]["scale"][0]) == 1.0 and float(new["bn"]["bias"][0]) == 1.0


def test_extra_transform_runs_before_the_optimizer():
    c = get_train_config()
    c.warmup_fraction, c.schedule = 0.0, "constant"
    params = {"w": jnp.ones((2, 2))}
    tx = make_optimizer(c, 10, extra=optax.set_to_zero())
    updates, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
    # gradients zeroed first: only weight decay (lr * wd * w) is left
    np.testing.assert_allclose(updates["w"], -c.lr * c.weight_decay * np.ones((2, 2)),
                               rtol=1e-6)
