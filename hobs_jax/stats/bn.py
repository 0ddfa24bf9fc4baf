"""BatchNorm re-estimation: recompute every BN's running statistics on calibration data.

After channels are removed (and weights compensated), the statistics a BN layer saw in
training no longer describe its input. Re-estimation runs the network in training mode
over the calibration batches (each BN normalizes with its batch statistics, as during
training) and sets each running mean/var to the pooled statistics of all batches:
mean = avg_b mean_b, var = avg_b (var_b + mean_b^2) - mean^2 (batches of equal size;
Flax's biased batch variance). Parameters are untouched.

Any network works: a zoo model, a user's linen module, an NNX module through its
:class:`~hobs_jax.models.Prunable` (whose BatchNorms run as linen BatchNorms). Each
BatchNorm's momentum is read from the layer itself (one abstract pass), since user
modules do not share the zoo's 0.9 (Flax's default is 0.99).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.stats.streams import ordered_map


def _batch_stats_of(model, variables, x, momenta: tuple):
    """Per-BN (mean, var) of this batch: a train-mode pass from zero running statistics
    gives new = (1 - momentum) * batch; divide it back out (``momenta``: (BN path,
    momentum) pairs)."""
    zero = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    v = dict(variables, batch_stats=zero)
    # Dropout and stochastic depth off: the statistics of the network that will be
    # evaluated (torch's model.train() recalibration would drop EfficientNet's residual
    # branches and skew the BNs after them).
    _, state = apply_batch_norm_mode(model, v, x)
    by_path = dict(momenta)

    def scale(path, s):
        bn = tuple(str(getattr(k, "key", k)) for k in path[:-1])
        return s / (1.0 - by_path.get(bn, DEFAULT_MOMENTUM))
    return jax.tree_util.tree_map_with_path(scale, state["batch_stats"])


DEFAULT_MOMENTUM = 0.9  # the zoo's (torch's 0.1)


def apply_batch_norm_mode(model: Any, variables: Mapping, x, **kwargs):
    """``model.apply(variables, x, train=True, mutable=['batch_stats'])`` with every
    ``flax.linen.Dropout`` and the zoo's ``StochasticDepth`` an identity: BatchNorm
    normalizes with the statistics of ``x`` (what a pruned network's re-estimated BN will
    hold) while the output is otherwise the evaluation network's, so the statistics are
    those of the network that will be evaluated and a score computed from it (R-SPAR's
    reward) carries no dropout noise. A user's own users of the ``dropout`` stream draw from
    a fixed key, as in training mode. Returns (output, mutated state).
    """
    import flax.linen as nn

    from hobs_jax.models.layers import StochasticDepth

    def identity_dropout(next_fun, args, kw, context):
        if isinstance(context.module, (nn.Dropout, StochasticDepth)) and context.method_name == "__call__":
            return args[0] if args else kw["inputs"]
        return next_fun(*args, **kw)

    with nn.intercept_methods(identity_dropout):
        return model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(0)}, **kwargs)


def momenta(model: Any, variables: Mapping, x_shape) -> tuple[tuple[tuple[str, ...], float], ...]:
    """(path, momentum) of every ``nn.BatchNorm`` ``model`` calls (abstract pass)."""
    import flax.linen as nn

    found: dict = {}

    def spy(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.BatchNorm):
            found.setdefault(tuple(context.module.path), float(context.module.momentum))
        return next_fun(*args, **kwargs)

    def run(v, x):
        with nn.intercept_methods(spy):
            return model.apply(v, x, train=False)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
    jax.eval_shape(run, abstract, jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32))
    return tuple(sorted(found.items()))


@functools.lru_cache(maxsize=16)
def _step(model: Any, momenta: tuple):
    """The jitted per-batch statistics of ``model`` (cached: a repeated re-estimation of the
    same architecture, e.g. pruning runs in one process, compiles once)."""
    return jax.jit(lambda v, x: _batch_stats_of(model, v, x, momenta))


def reestimate(model: Any, variables: Any = None, batches: Iterable[np.ndarray] | None = None, *,
               momentum: float | None = None, workers: int | None = None):
    """Every ``batch_stats`` leaf recomputed over ``batches``.

    Forms: ``reestimate(module, variables, batches) -> variables`` and
    ``reestimate(prunable, batches) -> Prunable`` (a :class:`~hobs_jax.models.Prunable`
    of any network: zoo, linen, NNX; ``prunable.to_nnx()`` then gives an NNX module).

    Args:
      model: a Flax module run as ``model.apply(v, x, train=True, mutable=["batch_stats"])``
        (a zoo module, or a Prunable's module).
      variables: {'params', 'batch_stats'}; a model without BN is returned unchanged.
      batches: [B, H, W, C] float arrays; all of one size except possibly the last,
        which is weighted by its size.
      momentum: every BatchNorm's Flax momentum (default: read from each layer).
      workers: host threads running batches concurrently (None: 2 on CPU, 1 elsewhere;
        :mod:`hobs_jax.stats.streams`); the batches are pooled in their order, so the
        result does not depend on it. Batches that are global arrays of a multi-process
        mesh (a training loop's) need 1: every process must issue the same collectives
        in the same order.
    """
    prunable = None
    if hasattr(model, "rebuild") and hasattr(model, "module"):  # a Prunable (duck-typed: stats imports no graph)
        prunable = model
        if batches is None:
            batches, variables = variables, None
        model, variables = prunable.module, prunable.variables if variables is None else variables
    if batches is None:
        raise ValueError("reestimate needs calibration batches")
    if "batch_stats" not in variables:
        return variables if prunable is None else prunable.with_variables(variables)
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("BN re-estimation needs at least one calibration batch")
    if momentum is None:
        found = momenta(model, variables, (1,) + tuple(np.shape(first)[1:]))
    else:
        found = tuple((p, float(momentum)) for p, _ in momenta(model, variables, (1,) + tuple(np.shape(first)[1:])))
    step = _step(model, found)
    batches = itertools.chain([first], batches)

    def one_batch(x):
        return int(x.shape[0]), jax.block_until_ready(step(variables, jnp.asarray(x)))

    sums, total = None, 0
    for n, stats in ordered_map(one_batch, batches, workers):
        # Per leaf: mean leaves accumulate the mean, var leaves var + mean^2 (below).
        contrib = _moments(stats)
        contrib = jax.tree.map(lambda a, n=n: _host(a) * n, contrib)
        sums = contrib if sums is None else jax.tree.map(np.add, sums, contrib)
        total += n
    if total == 0:
        raise ValueError("BN re-estimation needs at least one calibration batch")
    avg = jax.tree.map(lambda a: a / total, sums)
    new = dict(variables, batch_stats=_finalize(avg, variables["batch_stats"]))
    return new if prunable is None else prunable.with_variables(new)


def _host(a) -> np.ndarray:
    """A batch statistic as a float64 host array. Batches given as global arrays of a
    multi-process mesh give statistics reduced over the whole batch, replicated on every
    device, so this process' first shard holds the value."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = a.addressable_data(0)
    return np.asarray(a, np.float64)


def _moments(stats):
    """Replace each BN's var by var + mean^2 (second moment), keep mean."""
    def per_bn(node):
        if isinstance(node, dict) and set(node) == {"mean", "var"}:
            return {"mean": node["mean"], "var": node["var"] + node["mean"] ** 2}
        if isinstance(node, dict):
            return {k: per_bn(v) for k, v in node.items()}
        return node
    return per_bn(jax.device_get(stats))


def _finalize(avg, like):
    def per_bn(node, ref):
        if isinstance(node, dict) and set(node) == {"mean", "var"}:
            var = np.maximum(node["var"] - node["mean"] ** 2, 0.0)
            return {"mean": node["mean"].astype(ref["mean"].dtype), "var": var.astype(ref["var"].dtype)}
        return {k: per_bn(node[k], ref[k]) for k in node}
    return per_bn(avg, like)
