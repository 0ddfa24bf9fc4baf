"""The jitted train/eval steps: learning, NaN skip, KD, extra loss, lr scale, masks, FSDP."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from hobs_jax.train import (
    Teacher,
    TrainState,
    cross_entropy,
    distillation_loss,
    fsdp_spec,
    get_train_config,
    global_batch,
    make_eval_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    put_global,
    resolve_compute_dtype,
    state_shardings,
)
from tests._tiny import TinyCNN, TinyMLP, enable_compile_cache, init_tiny

enable_compile_cache()
MESH = make_mesh()


def setup(model, lr=0.05, **step_kw):
    c = get_train_config()
    c.lr, c.warmup_fraction, c.schedule = lr, 0.0, "constant"
    tx = make_optimizer(c, 100)
    variables = init_tiny(model, (8, 8, 1))
    state = TrainState.create(variables, tx, seed=0)
    shardings = state_shardings(state, MESH)
    state = put_global(state, shardings)
    step = make_train_step(model.apply, tx, mesh=MESH, state_shardings=shardings, **step_kw)
    return state, step


def batch(n=16, nan=False, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 8, 8, 1)) * scale).astype(np.float32)
    y = (np.arange(n) % 4).astype(np.int32)
    x += y[:, None, None, None].astype(np.float32)  # learnable: brightness encodes the class
    if nan:
        x[0, 0, 0, 0] = np.nan
    return global_batch({"image": x, "label": y}, MESH)


def test_loss_decreases_on_a_fixed_batch():
    state, step = setup(TinyCNN(num_classes=4))
    b = batch()
    losses = []
    for _ in range(8):
        state, m = step(state, b, {})
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.8 * losses[0]
    assert int(state.step) == 8 and int(state.nan_skips) == 0


def test_non_finite_batch_skips_the_update_and_counts_it():
    state, step = setup(TinyCNN(num_classes=4))
    state, _ = step(state, batch(), {})
    before = jax.tree.map(np.asarray, (state.params, state.batch_stats, state.opt_state))
    state, m = step(state, batch(nan=True), {})
    assert not bool(m["finite"]) and int(state.nan_skips) == 1 and int(state.step) == 2
    after = jax.tree.map(np.asarray, (state.params, state.batch_stats, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_lr_scale_zero_freezes_params():
    state, step = setup(TinyMLP(num_classes=4))
    state = state.replace(lr_scale=jnp.zeros(()))
    before = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, batch(), {})
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


def test_distillation_from_an_identical_teacher_costs_nothing():
    model = TinyMLP(num_classes=4)
    variables = init_tiny(model, (8, 8, 1))
    state, step = setup(model, teacher=Teacher(model.apply, variables), kd_alpha=1.0,
                        kd_temperature=2.0)
    _, m = step(state, batch(), variables)
    assert abs(float(m["loss"])) < 1e-5 and float(m["ce"]) > 0.5


def test_extra_loss_is_added():
    model = TinyMLP(num_classes=4)
    s1, plain = setup(model)
    s2, extra = setup(model, extra_loss=lambda params: 1.5 + 0.0 * optax.tree.norm(params))
    _, m1 = plain(s1, batch(), {})
    _, m2 = extra(s2, batch(), {})
    np.testing.assert_allclose(float(m2["loss"]) - float(m1["loss"]), 1.5, atol=1e-5)


def test_losses_match_their_formulas():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    labels = jnp.array([0])
    p = jax.nn.softmax(logits)[0]
    np.testing.assert_allclose(cross_entropy(logits, labels)[0], -np.log(p[0]), rtol=1e-6)
    smoothed = np.array([1 - 0.3 + 0.1, 0.1, 0.1])
    np.testing.assert_allclose(cross_entropy(logits, labels, 0.3)[0],
                               -(smoothed * np.log(p)).sum(), rtol=1e-6)
    assert float(distillation_loss(logits, logits, 4.0)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, -logits, 4.0)[0]) > 0


def test_bf16_compute_from_f32_master_weights():
    assert resolve_compute_dtype("auto") == jnp.float32  # CPU: off
    assert resolve_compute_dtype("bf16") == jnp.bfloat16
    model = TinyMLP(num_classes=4)
    s32, f32_step = setup(model)
    s16, bf16_step = setup(model, compute_dtype=jnp.bfloat16)
    s32, m32 = f32_step(s32, batch(), {})
    s16, m16 = bf16_step(s16, batch(), {})
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))


def test_eval_step_ignores_padding_and_reports_top5_only_above_5_classes():
    model = TinyMLP(num_classes=4)
    variables = init_tiny(model, (8, 8, 1))
    ev = make_eval_step(model.apply, mesh=MESH)
    b = {"image": np.zeros((6, 8, 8, 1), np.float32), "label": np.zeros(6, np.int32),
         "mask": np.array([1, 1, 1, 0, 0, 0], bool)}
    logits = model.apply(variables, b["image"])
    sums = ev(variables, global_batch(b, MESH))
    assert float(sums["count"]) == 3 and "top5_sum" not in sums
    expected_top1 = float(np.sum(np.argmax(logits[:3], -1) == 0))
    assert float(sums["top1_sum"]) == expected_top1
    np.testing.assert_allclose(float(sums["loss_sum"]),
                               float(cross_entropy(logits[:3], jnp.zeros(3, jnp.int32)).sum()),
                               rtol=1e-5)
    big = TinyMLP(num_classes=10)
    sums = make_eval_step(big.apply, mesh=MESH)(init_tiny(big, (8, 8, 1)), global_batch(b, MESH))
    assert 0 <= float(sums["top5_sum"]) <= 3 and float(sums["top5_sum"]) >= float(sums["top1_sum"])


def test_fsdp_spec_shards_the_largest_divisible_axis():
    assert fsdp_spec((3, 3, 16, 32), 4, 16) == P(None, None, None, "data")
    assert fsdp_spec((64, 10), 4, 16) == P("data")
    assert fsdp_spec((10,), 4, 1) == P()  # no divisible axis
    assert fsdp_spec((8, 8), 4, 1000) == P()  # too small
    assert fsdp_spec((8, 8), 1, 1) == P()
