"""The model zoo: published sizes, arbitrary widths, the width registry, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import models

ALL = models.list_models()
SMALL_INPUT = {"resnet20": 28, "resnet56": 28}


def _shape(name, batch=1):
    ic = 1 if name in SMALL_INPUT else 3
    return models.input_shape(name, batch, in_channels=ic, size=SMALL_INPUT.get(name))


def _random_widths(name, rng, low=0.25):
    w = models.default_widths(name)
    return {k: max(1, int(round(v * rng.uniform(low, 1.0)))) for k, v in w.items()}


def test_registry_has_the_twelve_models():
    assert ALL == sorted(["resnet18", "resnet34", "resnet50", "resnet101", "resnet20", "resnet56",
                          "mobilenet_v2", "efficientnet_b0", "vit_b_16",
                          "mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4"])


@pytest.mark.parametrize("name", ALL)
def test_arbitrary_widths_build_and_size_every_axis(name):
    """A model built at random widths has exactly those sizes on every axis each entry owns."""
    rng = np.random.RandomState(abs(hash(name)) % 2**31)
    widths = _random_widths(name, rng)
    ic = 1 if name in SMALL_INPUT else 3
    model = models.build(name, widths=widths, num_classes=7, in_channels=ic)
    shape = _shape(name, 2)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape)), variables)
    assert out.shape == (2, 7)
    got, nc, in_ch = models.infer_widths(name, variables)
    assert got == widths and nc == 7 and in_ch == ic


@pytest.mark.parametrize("name", ALL)
def test_every_width_entry_sizes_some_axis(name):
    axes = models.width_axes(name)
    assert set(axes) == set(models.default_widths(name)) | {"@num_classes", "@in_channels"}
    assert all(axes[k] for k in axes), [k for k in axes if not axes[k]]


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "efficientnet_b0"])
def test_narrow_model_runs_and_is_finite(name):
    rng = np.random.RandomState(0)
    widths = _random_widths(name, rng, low=0.1)
    ic = 1 if name in SMALL_INPUT else 3
    model = models.build(name, widths=widths, num_classes=10, in_channels=ic)
    shape = models.input_shape(name, 2, in_channels=ic, size=32)
    # Jitted: eagerly every op of a net with these odd widths compiles on its own (75 s for
    # EfficientNet-B0 on the 2-core CPU); the computation is the same.
    v = jax.jit(lambda k: models.init(model, k, shape))(jax.random.key(1))
    y = jax.jit(model.apply)(v, jax.random.normal(jax.random.key(2), shape))
    assert y.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y)))


def test_train_mode_updates_batch_stats_and_uses_dropout_rng():
    model = models.build("resnet20", in_channels=1)
    v = models.init(model, jax.random.key(0), (4, 28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    y, state = model.apply(v, x, train=True, mutable=["batch_stats"])
    assert y.shape == (4, 10)
    before = v["batch_stats"]["bn1"]["mean"]
    after = state["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)
    eff = models.build("efficientnet_b0", widths={}, num_classes=3)
    ve = jax.eval_shape(lambda: models.init(eff, jax.random.key(0), (2, 32, 32, 3)))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: eff.apply(v, jnp.zeros((2, 32, 32, 3)), train=True,
                                           mutable=["batch_stats"]), ve)


@pytest.mark.parametrize("bad,match", [
    (dict(name="resnet5"), "unknown model 'resnet5'"),
    (dict(name="resnet50", widths={"layer9": 3}), "unknown width entry 'layer9'"),
    (dict(name="resnet50", widths={"conv1": 0}), "width 'conv1' must be >= 1, got 0"),
    (dict(name="resnet50", widths={"conv1": -4}), "width 'conv1' must be >= 1, got -4"),
    (dict(name="resnet50", widths={"conv1": 3.5}), "width 'conv1' must be an int"),
    (dict(name="vit_b_16", widths={"encoder_layer_0.heads": 0}), "encoder_layer_0.heads"),
    (dict(name="resnet20", num_classes=0), "num_classes must be a positive int"),
])
def test_bad_build_arguments_raise_one_line_errors(bad, match):
    name = bad.pop("name")
    with pytest.raises(ValueError, match=match) as e:
        models.build(name, **bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("x_shape,dtype,match", [
    ((28, 28, 1), jnp.float32, "rank 3"),
    ((2, 28, 28, 3), jnp.float32, "3 channels"),
    ((2, 28, 28, 1), jnp.int32, "dtype must be floating"),
])
def test_bad_inputs_raise_one_line_errors(x_shape, dtype, match):
    model = models.build("resnet20", in_channels=1)
    v = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, 28, 28, 1)))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x_shape, dtype)), v)


def test_vit_rejects_wrong_image_size():
    model = models.build("vit_b_16")
    v = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, 224, 224, 3)))
    with pytest.raises(ValueError, match="spatial size 160x160, expected 224x224"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 160, 160, 3))), v)
