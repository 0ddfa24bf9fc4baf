"""The fast depthwise path (hobs_jax.models.depthwise): shifted-slice sums equal the grouped
conv (forward and gradients), the interceptor reproduces the zoo's mobile CNNs, composes with
other interceptors, leaves other models' programs unchanged, and ``fit`` trains with it."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hobs_jax import models
from hobs_jax.data import EvalLoader, TrainLoader, get_source
from hobs_jax.models.depthwise import MODES, fast_depthwise, resolve_mode, shift_add_depthwise
from hobs_jax.train import (
    TrainState,
    evaluate,
    fit,
    get_train_config,
    make_mesh,
    make_optimizer,
    make_train_step,
    state_shardings,
    validate_train_config,
)
from hobs_jax.train.config import FAST_DEPTHWISE

DN = ("NHWC", "HWIO", "NHWC")
GROUPED = re.compile(r"feature_group_count\s*=\s*(\d+)")


def grouped_conv(x, k, strides, padding, dilation):
    return lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=DN, feature_group_count=x.shape[-1])


def rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


@pytest.mark.parametrize("hw,k,s,pad,d", [
    ((7, 7), 3, 1, ((1, 1), (1, 1)), 1),
    ((8, 8), 3, 2, ((1, 1), (1, 1)), 1),
    ((9, 6), 5, 2, "SAME", 1),
    ((10, 11), 5, 1, ((2, 2), (2, 2)), 1),
    ((8, 9), 3, 2, "SAME", 1),
    ((11, 10), 3, 1, "VALID", 2),
    ((9, 8), 5, 2, ((2, 1), (0, 3)), 1),
])
def test_shift_add_equals_grouped_conv_forward_and_gradients(hw, k, s, pad, d):
    rng = np.random.default_rng(k * 10 + s)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, *hw, 5)))
        w = jnp.asarray(rng.normal(size=(k, k, 1, 5)))
        ref = grouped_conv(x, w, (s, s), pad, (d, d))
        out = shift_add_depthwise(x, w, s, pad, d)
        assert out.dtype == jnp.float64 and out.shape == ref.shape
        assert rel(ref, out) < 1e-12

        def loss(f):  # a non-linear read-out so the cotangent differs per element
            return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

        g_ref = jax.grad(loss(lambda x, w: grouped_conv(x, w, (s, s), pad, (d, d))), (0, 1))(x, w)
        g_out = jax.grad(loss(lambda x, w: shift_add_depthwise(x, w, s, pad, d)), (0, 1))(x, w)
        assert rel(g_ref[0], g_out[0]) < 1e-12 and rel(g_ref[1], g_out[1]) < 1e-12


def test_shift_add_refuses_what_is_not_a_depthwise_conv():
    x = jnp.zeros((1, 6, 6, 4))
    with pytest.raises(ValueError, match=r"kernel \(3, 3, 1, 3\) must be \[kh, kw, 1, 4\]"):
        shift_add_depthwise(x, jnp.zeros((3, 3, 1, 3)))
    with pytest.raises(ValueError, match="padding='CIRCULAR'"):
        shift_add_depthwise(x, jnp.zeros((3, 3, 1, 4)), padding="CIRCULAR")
    with pytest.raises(ValueError, match="empty output"):
        shift_add_depthwise(x, jnp.zeros((7, 7, 1, 4)), padding="VALID")


def conv_groups(text: str) -> list[int]:
    return [int(g) for g in GROUPED.findall(text)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2_small", "efficientnet_b0_small"])
def test_zoo_mobile_cnn_through_the_fast_path_equals_its_apply(name):
    model = models.build(name, num_classes=10)
    variables = models.init(model, jax.random.key(0), (1, 28, 28, 1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 1)), jnp.float32)
    fast = fast_depthwise(model.apply)
    rngs = {"dropout": jax.random.key(2)}

    def run(apply_fn):
        ev = apply_fn(variables, x, train=False)
        tr, upd = apply_fn(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        return ev, tr, upd["batch_stats"]

    ref = jax.jit(lambda: run(model.apply))()
    got = jax.jit(lambda: run(fast))()
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        # 1e-5 relative; the floor is for BN means that are zero up to rounding (~1e-9)
        assert a.shape == b.shape
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7
    # the grouped convolutions are gone from the fast program and only from it
    assert max(conv_groups(str(jax.make_jaxpr(lambda: run(model.apply))()))) > 1
    assert max(conv_groups(str(jax.make_jaxpr(lambda: run(fast))()))) == 1


class TinyDW(nn.Module):
    """stem conv -> depthwise 3x3 (stride 2, bias) -> BN -> ReLU -> depthwise 5x5 'SAME'
    -> mean -> dense: a depthwise network small enough to train in a test."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="stem")(x)
        x = nn.Conv(8, (3, 3), strides=2, padding=((1, 1), (1, 1)), feature_group_count=8,
                    name="dw1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
        x = nn.Conv(8, (5, 5), padding="SAME", feature_group_count=8, use_bias=False, name="dw2")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def test_interceptors_entered_inside_see_the_depthwise_calls_and_their_effect_stays():
    model = TinyDW()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 10, 3)), jnp.float32)
    v = model.init(jax.random.key(0), x)

    def doubled_dw2(apply_fn, seen):  # an interceptor entered inside the wrapped apply
        def apply(variables, x):
            def icpt(next_fun, args, kwargs, context):
                y = next_fun(*args, **kwargs)
                if context.method_name == "__call__" and context.module.name in ("dw1", "dw2"):
                    seen.append((context.module.name, args[0].shape, y.shape))
                    if context.module.name == "dw2":
                        y = 2.0 * y
                return y

            with nn.intercept_methods(icpt):
                return apply_fn(variables, x)

        return apply

    seen_ref, seen_fast = [], []
    ref = doubled_dw2(model.apply, seen_ref)(v, x)
    got = fast_depthwise(doubled_dw2(model.apply, seen_fast))(v, x)
    assert seen_fast == seen_ref == [("dw1", (2, 10, 10, 8), (2, 5, 5, 8)),
                                     ("dw2", (2, 5, 5, 8), (2, 5, 5, 8))]
    assert rel(ref, got) < 1e-5 and rel(ref, model.apply(v, x)) > 1e-3  # the doubling counted
    # an interceptor entered outside the wrapped function sees them too
    seen_outer = []
    with nn.intercept_methods(lambda f, a, kw, ctx: seen_outer.append(ctx.module.name) or f(*a, **kw)):
        outer = fast_depthwise(model.apply)(v, x)
    assert {"dw1", "dw2"} <= set(seen_outer) and rel(model.apply(v, x), outer) < 1e-5
    # init through the wrapper creates the same variables (the layer makes its own kernel)
    v2 = fast_depthwise(model.init)(jax.random.key(0), x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v, v2))


def _lowered_step(model, variables, apply_fn, image):
    c = get_train_config()
    tx = make_optimizer(c, 10)
    mesh = make_mesh()
    state = TrainState.create(variables, tx, 0)
    step = make_train_step(apply_fn, tx, mesh=mesh, state_shardings=state_shardings(state, mesh))
    batch = {"image": jnp.zeros((4, *image), jnp.float32), "label": jnp.zeros((4,), jnp.int32)}
    return step.lower(state, batch, {}).as_text()


def test_a_model_without_depthwise_convs_compiles_to_the_same_train_step():
    model = models.build("resnet20", num_classes=10, in_channels=1)
    v = models.random_variables(model, (1, 28, 28, 1))
    plain = _lowered_step(model, v, model.apply, (28, 28, 1))
    assert plain == _lowered_step(model, v, fast_depthwise(model.apply), (28, 28, 1))
    assert "convolution" in plain


def test_the_depthwise_train_step_has_no_grouped_convolution():
    model = TinyDW()
    v = model.init(jax.random.key(0), jnp.zeros((1, 10, 10, 3)))
    assert 8 in conv_groups(_lowered_step(model, v, model.apply, (10, 10, 3)))
    assert set(conv_groups(_lowered_step(model, v, fast_depthwise(model.apply), (10, 10, 3)))) == {1}


def test_fit_trains_with_the_fast_path_like_without_it(tmp_path):
    src = get_source("synthetic", image_shape=(10, 10, 3), num_classes=4, train_size=256,
                     test_size=32)
    model = TinyDW()
    v = model.init(jax.random.key(0), jnp.zeros((1, 10, 10, 3)))
    out = {}
    for mode in ("on", "off"):
        c = get_train_config()
        c.steps, c.batch_size, c.lr, c.log_every = 24, 32, 0.05, 8
        c.checkpoint.every_steps, c.progress, c.tensorboard = 0, False, False
        c.fast_depthwise = mode
        out[mode] = fit(model, v, TrainLoader(src, "train", 32, seed=0), c, str(tmp_path / mode),
                        eval_data=EvalLoader(src, "test", 32))
    on, off = out["on"], out["off"]
    assert on.metrics["steps_run"] == 24 and np.isfinite(on.metrics["train_loss"])
    np.testing.assert_allclose(on.metrics["val_loss"], off.metrics["val_loss"], rtol=1e-3)
    # evaluate() with and without the fast path: same numbers on the same variables
    ev = {m: evaluate(model, on.variables, EvalLoader(src, "test", 32), fast_depthwise=m)
          for m in ("on", "off")}
    assert ev["on"]["count"] == 32 and ev["on"]["top1"] == ev["off"]["top1"]
    np.testing.assert_allclose(ev["on"]["loss"], ev["off"]["loss"], rtol=1e-5)
    # same training up to float32 rounding of the 9- and 25-term sums
    for a, b in zip(jax.tree.leaves(on.variables), jax.tree.leaves(off.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                         on.variables["params"], v["params"]))
    assert min(moved) > 0  # every parameter trained


def test_fast_depthwise_mode_is_validated_in_one_line():
    assert FAST_DEPTHWISE == MODES == ("auto", "on", "off")
    c = get_train_config()
    assert c.fast_depthwise == "auto"
    c.fast_depthwise = "yes"
    with pytest.raises(ValueError, match=r"^train\.fast_depthwise='yes': unknown; use one of"):
        validate_train_config(c)
    with pytest.raises(ValueError, match="fast_depthwise='fast'"):
        resolve_mode("fast")
    assert resolve_mode("auto") is (jax.default_backend() == "cpu")
    assert resolve_mode("on") and not resolve_mode("off")


class NotOurs(nn.Module):
    """Grouped convs the fast path must leave to the layer: channel multiplier 2, CIRCULAR
    padding, input dilation, a 9x9 window, a grouped (not depthwise) conv."""

    @nn.compact
    def __call__(self, x):
        ys = [nn.Conv(8, (3, 3), feature_group_count=4, name="mult2")(x),
              nn.Conv(4, (3, 3), padding="CIRCULAR", feature_group_count=4, name="circ")(x),
              nn.Conv(4, (3, 3), padding=1, input_dilation=2, feature_group_count=4, name="idil")(x),
              nn.Conv(4, (9, 9), feature_group_count=4, name="big")(x),
              nn.Conv(4, (3, 3), feature_group_count=2, name="grouped")(x)]
        return jnp.concatenate([y.reshape(y.shape[0], -1) for y in ys], axis=-1)


def test_other_grouped_convs_fall_through_to_the_layer():
    model = NotOurs()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 4)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    plain = str(jax.make_jaxpr(lambda v: model.apply(v, x))(v))
    fast = str(jax.make_jaxpr(lambda v: fast_depthwise(model.apply)(v, x))(v))
    assert plain == fast and sorted(conv_groups(fast)) == [2, 4, 4, 4, 4]


def test_a_pruned_linen_module_runs_at_its_widths_through_the_fast_path():
    """hobs_jax.graph's LinenModel runs a module at the widths of its variables by cloning
    layers in its own interceptor, entered inside the wrapped apply: the fast path computes
    the clone (6 channels where the module was built with 8)."""
    from hobs_jax.graph import linen_model

    model = linen_model.wrap(TinyDW())
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 10, 3)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    keep = np.array([0, 1, 3, 4, 6, 7])

    def cut(path, a):
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == "kernel" and names[-2] in ("stem", "dw1", "dw2"):
            return a[..., keep]
        if names[-1] == "kernel" and names[-2] == "head":
            return a[keep]
        return a[keep] if a.ndim == 1 and a.shape[0] == 8 else a

    small = jax.tree_util.tree_map_with_path(cut, v)
    ref = model.apply(small, x)
    got = fast_depthwise(model.apply)(small, x)
    assert ref.shape == (2, 4) and rel(ref, got) < 1e-5
    assert set(conv_groups(str(jax.make_jaxpr(lambda: fast_depthwise(model.apply)(small, x))()))) == {1}
    assert 6 in conv_groups(str(jax.make_jaxpr(lambda: model.apply(small, x))()))
