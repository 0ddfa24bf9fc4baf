"""The recovery-recipe study's parts (hobs_jax.experiments.recovery / common): recipes by
name, combined with '+', or as key=value pairs; unknown names and keys fail in one line;
the frozen-BatchNorm view trains with the running statistics and keeps them."""

import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import models
from hobs_jax.experiments.common import FrozenBatchNorm, recipe
from hobs_jax.experiments.recovery import parse_recipe


def test_recipes_by_name_combination_and_pairs():
    assert parse_recipe("base") == {}
    assert parse_recipe("kd+lr1e-3+warmup") == {"kd.enabled": True, "lr": 0.001, "warmup_fraction": 0.1}
    assert parse_recipe("lr=0.003,kd.enabled=true") == {"lr": 0.003, "kd.enabled": True}
    with pytest.raises(ValueError, match=r"^recipe 'nope': unknown; use one of base, ") as e:
        parse_recipe("kd+nope")
    assert "\n" not in str(e.value)
    c = recipe("resnet20", parse_recipe("kd+lr1e-3"), steps=7, seed=3)
    assert (c.steps, c.epochs, c.seed, c.lr, c.kd.enabled) == (7, 0.0, 3, 0.001, True)
    with pytest.raises(ValueError, match=r"^recipe: unknown key 'kd.nope'"):
        recipe("resnet20", {"kd.nope": 1}, steps=1)


def test_frozen_batchnorm_trains_in_inference_mode():
    model = models.build("resnet20", num_classes=10, in_channels=1)
    variables = models.random_variables(model, (1, 16, 16, 1), seed=0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype(np.float32))
    frozen = FrozenBatchNorm(model)
    out, state = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.allclose(out, model.apply(variables, x, train=False), atol=1e-6)
    assert state["batch_stats"] is variables["batch_stats"]
    train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(out, train_out, atol=1e-4)  # the plain model would use batch statistics
