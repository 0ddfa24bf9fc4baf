"""Random variables for networks outside the zoo, made with numpy.

Tests and examples need variables, not training: XLA:CPU compiles Flax's initializers
(threefry, erf_inv) for seconds per network, and an NNX module's eager construction
dispatches (and compiles) every initializer op by op (~25 s for the MBConv net on this
2-core CPU). Shapes come from an abstract construction instead, values from numpy with
the same distributions as :func:`hobs_jax.models.random_variables` (kernels
N(0, 1/fan_in), scales around 1, BN variances U(0.5, 1.5)).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


def _fill(abstract: Mapping, seed: int) -> dict:
    rng = np.random.RandomState(seed)

    def make(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        s = tuple(leaf.shape)
        dtype = np.dtype(leaf.dtype)
        if names[-1] in ("kernel", "embedding") and len(s) >= 2:
            if len(s) == 3:  # attention projections: [D, heads, dim] in, [heads, dim, D] out
                fan_in = s[0] * s[1] if names[-2] == "out" else s[0]
            else:
                fan_in = int(np.prod(s[:-1]))
            return rng.normal(0.0, 1.0 / np.sqrt(fan_in), s).astype(dtype)
        if names[0] == "batch_stats":
            if names[-1] == "var":
                return rng.uniform(0.5, 1.5, s).astype(dtype)
            return rng.normal(0.0, 0.1, s).astype(dtype)
        base = 1.0 if names[-1] == "scale" else 0.0
        return (base + rng.normal(0.0, 0.1, s)).astype(dtype)

    return jax.tree_util.tree_map_with_path(make, dict(abstract))


def random_linen(module: Any, input_shape, seed: int = 0) -> dict:
    """Random ``{"params", "batch_stats"?}`` for linen ``module`` on inputs of
    ``input_shape`` (its own variable paths)."""
    import jax.numpy as jnp

    from hobs_jax.graph.linen_model import wrap

    adapter = wrap(module)
    shape = (1,) + tuple(input_shape[1:])
    abstract = jax.eval_shape(lambda: adapter.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                   jnp.zeros(shape, jnp.float32), train=False))
    return _fill({k: v for k, v in abstract.items() if k != "intermediates"}, seed)


def random_nnx(cls, seed: int = 0, **kwargs):
    """``cls(**kwargs, rngs=...)`` with random arrays, constructed abstractly (no
    initializer runs) and filled with numpy."""
    from flax import nnx

    from hobs_jax.graph.nnx_model import split_variables, with_arrays

    abstract = nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))
    shapes, _ = split_variables(abstract)
    return with_arrays(abstract, _fill(shapes, seed))
