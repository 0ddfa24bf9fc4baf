"""Random variables for networks outside the zoo, made with numpy.

Tests and examples need variables, not training: XLA:CPU compiles Flax's initializers
(threefry, erf_inv) for seconds per network, and an NNX module's eager construction
dispatches (and compiles) every initializer op by op (~25 s for the MBConv net on this
2-core CPU). Shapes come from an abstract construction instead, values from numpy with
:func:`hobs_jax.models.fill_random`, as :func:`hobs_jax.models.random_variables` (kernels
N(0, 1/fan_in), scales around 1, BN variances U(0.5, 1.5)).
"""

from __future__ import annotations

from typing import Any

import jax

from hobs_jax.models import fill_random


def random_linen(module: Any, input_shape, seed: int = 0) -> dict:
    """Random ``{"params", "batch_stats"?}`` for linen ``module`` on inputs of
    ``input_shape`` (its own variable paths)."""
    import jax.numpy as jnp

    from hobs_jax.graph.linen_model import wrap

    adapter = wrap(module)
    shape = (1,) + tuple(input_shape[1:])
    abstract = jax.eval_shape(lambda: adapter.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                   jnp.zeros(shape, jnp.float32), train=False))
    return fill_random({k: v for k, v in abstract.items() if k != "intermediates"}, seed)


def random_nnx(cls, seed: int = 0, **kwargs):
    """``cls(**kwargs, rngs=...)`` with random arrays, constructed abstractly (no
    initializer runs) and filled with numpy."""
    from flax import nnx

    from hobs_jax.graph.nnx_model import split_variables, with_arrays

    abstract = nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))
    shapes, _ = split_variables(abstract)
    return with_arrays(abstract, fill_random(dict(shapes), seed))
