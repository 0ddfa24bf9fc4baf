"""The training state: one frozen pytree that checkpoints and shards as a whole."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a frozen pytree).

    Attributes:
      step: int32 [] number of optimizer steps taken (skipped non-finite steps included).
      params: model parameters (float32 master copy).
      batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
      opt_state: the optax state.
      rng: uint32 [2] base PRNG key; step ``s`` uses ``fold_in(rng, s)`` for dropout.
      lr_scale: float32 [] multiplier of the scheduled learning rate (halved by the
        stability monitor at every loss spike).
      nan_skips: int32 [] updates skipped because the loss or a gradient was not finite.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    lr_scale: jax.Array
    nan_skips: jax.Array

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
        """Initial state from model variables ({'params': ..., 'batch_stats'?: ...})."""
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                   rng=jax.random.PRNGKey(seed), lr_scale=jnp.ones((), jnp.float32),
                   nan_skips=jnp.zeros((), jnp.int32))

    def variables(self) -> dict:
        """Model variables for ``model.apply``: {'params', 'batch_stats' if any}."""
        out = {"params": self.params}
        if jax.tree.leaves(self.batch_stats):
            out["batch_stats"] = self.batch_stats
        return out
