"""Training-mode BatchNorm without the randomness of training (``stats.bn.apply_batch_norm_mode``):
what BN re-estimation and R-SPAR's reward evaluate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import models
from hobs_jax.models.layers import StochasticDepth, stochastic_depth
from hobs_jax.stats.bn import apply_batch_norm_mode


class _BNDropout(nn.Module):
    """Dense -> BatchNorm -> Dropout(0.5) -> Dense; ``rate`` 0 is the reference."""

    rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
        return nn.Dense(3)(nn.Dropout(self.rate, deterministic=not train)(x))


def test_batch_norm_mode_normalizes_with_batch_statistics_and_drops_nothing():
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32) * 3 + 1
    model = _BNDropout()
    v = model.init(jax.random.key(0), x)
    out, state = apply_batch_norm_mode(model, v, x)  # no rng needed
    ref, ref_state = _BNDropout(rate=0.0).apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(state["batch_stats"]["BatchNorm_0"]["mean"]),
                                  np.asarray(ref_state["batch_stats"]["BatchNorm_0"]["mean"]))
    # and it is not the running-statistics network
    assert not np.allclose(np.asarray(out), np.asarray(model.apply(v, x, train=False)), atol=1e-3)



def test_efficientnet_statistics_come_from_the_network_without_stochastic_depth():
    """EfficientNet's residual branches are dropped per example in training; the BN
    statistics of BN re-estimation must be those of the evaluated network (no drops), or
    the BNs after a dropped branch see a skewed variance."""
    m = models.build("efficientnet_b0_small", num_classes=10, in_channels=1)
    v = models.random_variables(m, (1, 16, 16, 1), seed=0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32)
    out, state = apply_batch_norm_mode(m, v, x)
    ref = models.build("efficientnet_b0_small", num_classes=10, in_channels=1, stochastic_depth_prob=0.0,
                       dropout=0.0)
    want, want_state = ref.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
    jax.tree.map(np.testing.assert_array_equal, state, want_state)
    drawn, _ = m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(np.asarray(drawn), np.asarray(want), atol=1e-3)  # training does drop


class _Residual(nn.Module):
    as_module: bool

    @nn.compact
    def __call__(self, x, train: bool):
        key = lambda: self.make_rng("dropout")  # noqa: E731
        if self.as_module:
            return x + StochasticDepth(0.5)(x * 2.0, not train, key)
        return x + stochastic_depth(x * 2.0, 0.5, not train, key)


def test_stochastic_depth_module_draws_what_the_function_draws():
    """The module takes its key from the caller's stream: training's draws are unchanged
    (the EfficientNet checkpoints were trained with the function)."""
    x = jnp.ones((64, 3))
    a, b = (_Residual(m).apply({}, x, True, rngs={"dropout": jax.random.key(3)}) for m in (True, False))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert 0 < int(jnp.sum(b[:, 0] == 1)) < 64  # some rows dropped, some kept
    out, _ = apply_batch_norm_mode(_Residual(True), {}, x)  # and none in BatchNorm mode
    np.testing.assert_array_equal(np.asarray(out), np.asarray(3 * x))
