"""The contract every registered pruning method keeps (one test per method, as optax's
``_common_test.py`` does for optimizers): methods found by ``list_methods()``, so new
ones (hybrids included) are checked the day they are registered, each with its parts'
smoke options (``MethodSpec.smoke_config()``: a few R-SPAR episodes, two DepGraph
sparse-learning steps, no progress bars) and no case of its own.

On ResNet-20 at 16x16x1 (random variables, 32 random calibration images):
  * the target is met within 1% for MACs at 0.5 (and, in ``make test-all``, at 0.33 and
    for params at 0.5);
  * same seed -> identical plan JSON and bit-identical variables (outcome and pruned);
  * the pruned network runs: finite logits of shape [N, 10];
  * ``outcome.variables`` is full-size: the input's tree structure and leaf shapes;
  * the outcome's artifacts (R-SPAR's charts) write non-empty files where asked;
  * options round-trip through the config section and an unknown one fails in one line.

The same methods on a linen module outside the zoo (``_UserNet``: hard-coded widths, no
width fields), one run each at half the MACs: target, a physically smaller module, full-size
outcome variables, finite logits, a deterministic plan.

Methods that train (DepGraph's sparse phase) get a real, minimal training callback
(`hobs_jax.methods.training_time.sgd_callback`):
2 SGD steps on the calibration images with the method's gradient transformation. The
model's gradient is jitted once per module (and kept in the persistent compile cache);
the transformation runs eagerly, so a new transformation per run costs no compile.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import models
from hobs_jax.methods import Calibration, get_method, list_methods, make_task, run
from hobs_jax.methods.training_time import sgd_callback
from tests._tiny import enable_compile_cache

enable_compile_cache()

NAME, SHAPE = "resnet20", (1, 16, 16, 1)
TOL = 0.01


@functools.cache
def _setup():
    model = models.build(NAME, num_classes=10, in_channels=1)
    variables = models.random_variables(model, SHAPE, seed=0)
    rng = np.random.default_rng(0)
    calib = Calibration(rng.normal(size=(32,) + SHAPE[1:]).astype(np.float32),
                        rng.integers(0, 10, 32).astype(np.int32))

    finetune = sgd_callback(model, calib, batch=16)

    # One graph and cost model for every run (tracing ResNet-20 dominates a run's time).
    base = make_task("magnitude", NAME, variables, target=0.5, calib=calib, finetune=finetune)
    return variables, calib, base


def _run(method, target, metric="macs"):
    _, _, base = _setup()
    options = get_method(method).smoke_config()
    return run(method, dataclasses.replace(base, target=target, metric=metric, options=options))


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(np.shape(a)), tree)


def test_registry_lists_the_methods_and_a_hybrid():
    assert {"magnitude", "depgraph", "udfc", "hobs", "hobs_nohessian", "rspar"} <= set(list_methods())
    hybrids = [m for m in list_methods() if get_method(m).scorer == "l2" and get_method(m).compensator == "obs"]
    assert hybrids  # magnitude selection with OBS compensation is a registered composition


def _check_run(method, target, metric):
    """One run: target met within 1%, full-size outcome variables, finite logits."""
    variables, calib, _ = _setup()
    r = _run(method, target, metric)
    got = r.macs_ratio if metric == "macs" else r.params_ratio
    assert abs(got / target - 1) <= TOL, (method, metric, target, got)
    # Full-size outcome variables: the input's structure and shapes.
    assert (jax.tree_util.tree_structure(r.outcome.variables)
            == jax.tree_util.tree_structure(variables))
    assert _shapes(r.outcome.variables) == _shapes(variables)
    logits = np.asarray(r.model.apply(r.variables, jnp.asarray(calib.images[:8]), train=False))
    assert logits.shape == (8, 10)
    assert np.isfinite(logits).all()
    return r


@pytest.mark.extended
@pytest.mark.parametrize("method", list_methods())
def test_method_contract_other_targets(method):
    """A third of the MACs and half the params, with the same checks (``make test-all``)."""
    for target, metric in ((0.33, "macs"), (0.5, "params")):
        r = _check_run(method, target, metric)
        got = r.macs_ratio if metric == "macs" else r.params_ratio
        assert abs(got / target - 1) <= TOL, (method, metric, target, got)


@pytest.mark.parametrize("method", list_methods())
def test_method_contract(method, tmp_path):
    _setup()
    spec = get_method(method)
    # Options: typed, validated when built, the config section round-trips, typos fail.
    assert spec.options(spec.default_config()).to_dict() == spec.default_config().to_dict()
    with pytest.raises(ValueError, match=f"^{method}: unknown option 'no_such_option'") as e:
        spec.options(dict(no_such_option=1))
    assert "\n" not in str(e.value)
    first = _check_run(method, 0.5, "macs")
    # Artifacts (plots, tables) write where the caller says, whatever the method.
    for name, write in first.outcome.artifacts.items():
        paths = list(write(str(tmp_path / name)))
        assert paths and all(os.path.getsize(p) > 0 for p in paths), (method, name)
    again = _run(method, 0.5, "macs")
    assert again.outcome.plan.to_json() == first.outcome.plan.to_json()
    for a, b in ((first.outcome.variables, again.outcome.variables), (first.variables, again.variables)):
        same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
        assert all(jax.tree.leaves(same)), method


class _UserNet(nn.Module):
    """A network outside the zoo, written as a user would (hard-coded widths, no width
    fields): three conv-BN-ReLU layers, a 1x1 projection, global pooling, a classifier."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for width, stride in ((16, 1), (24, 2), (32, 2)):
            x = nn.Conv(width, (3, 3), strides=stride, padding=1, use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(
            nn.Conv(24, (1, 1), use_bias=False)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


@functools.cache
def _user_setup():
    from hobs_jax.testing.init import random_linen

    model = _UserNet()
    variables = random_linen(model, SHAPE, seed=0)
    _, calib, _ = _setup()
    base = make_task("magnitude", model, variables, target=0.5, calib=calib,
                     finetune=sgd_callback(model, calib, batch=16))
    return model, variables, calib, base


@pytest.mark.parametrize("method", list_methods())
def test_method_contract_outside_the_zoo(method):
    """Every registered method on a linen module outside the zoo: the target met within
    1%, a physically smaller module (fewer parameters, not masks), full-size outcome
    variables, finite logits, the same plan from the same seed."""
    model, variables, calib, base = _user_setup()
    task = dataclasses.replace(base, target=0.5, options=get_method(method).smoke_config())
    r = run(method, task)
    assert abs(r.macs_ratio / 0.5 - 1) <= TOL, (method, r.macs_ratio)
    assert _shapes(r.outcome.variables) == _shapes(variables)
    n_params = lambda v: sum(np.size(a) for a in jax.tree.leaves(v["params"]))  # noqa: E731
    assert n_params(r.variables) < n_params(variables)
    logits = np.asarray(r.model.apply(r.variables, jnp.asarray(calib.images[:8]), train=False))
    assert logits.shape == (8, 10) and np.isfinite(logits).all()
    assert run(method, task).outcome.plan.to_json() == r.outcome.plan.to_json()


def test_the_minimal_training_callback_refuses_a_batch_larger_than_the_calibration_set():
    _, calib, _ = _setup()
    model = models.build(NAME, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="batch 64 is larger than the 32 calibration examples"):
        sgd_callback(model, calib, batch=64)
