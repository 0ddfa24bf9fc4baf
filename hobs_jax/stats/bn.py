"""BatchNorm re-estimation: recompute every BN's running statistics on calibration data.

After channels are removed (and weights compensated), the statistics a BN layer saw in
training no longer describe its input. Re-estimation runs the network in training mode
over the calibration batches (each BN normalizes with its batch statistics, as during
training) and sets each running mean/var to the pooled statistics of all batches:
mean = avg_b mean_b, var = avg_b (var_b + mean_b^2) - mean^2 (batches of equal size;
Flax's biased batch variance). Parameters are untouched.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.stats.streams import ordered_map


def _batch_stats_of(model, variables, x, momentum: float):
    """Per-BN (mean, var) of this batch: a train-mode pass from zero running statistics
    gives new = (1 - momentum) * batch; divide it back out."""
    zero = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    v = dict(variables, batch_stats=zero)
    _, state = model.apply(v, x, train=True, mutable=["batch_stats"])
    return jax.tree.map(lambda s: s / (1.0 - momentum), state["batch_stats"])


@functools.lru_cache(maxsize=16)
def _step(model: Any, momentum: float):
    """The jitted per-batch statistics of ``model`` (cached: a repeated re-estimation of the
    same architecture, e.g. pruning runs in one process, compiles once)."""
    return jax.jit(lambda v, x: _batch_stats_of(model, v, x, momentum))


def reestimate(model: Any, variables: dict, batches: Iterable[np.ndarray], *,
               momentum: float = 0.9, workers: int | None = None) -> dict:
    """``variables`` with every ``batch_stats`` leaf recomputed over ``batches``.

    Args:
      model: a zoo Flax module (BNs with Flax momentum ``momentum``, the zoo's 0.9).
      variables: {'params', 'batch_stats'}; a model without BN is returned unchanged.
      batches: [B, H, W, C] float arrays; all of one size except possibly the last,
        which is weighted by its size.
      workers: host threads running batches concurrently (None: 2 on CPU, 1 elsewhere;
        :mod:`hobs_jax.stats.streams`); the batches are pooled in their order, so the
        result does not depend on it.
    """
    if "batch_stats" not in variables:
        return variables
    step = _step(model, float(momentum))

    def one_batch(x):
        return int(x.shape[0]), jax.block_until_ready(step(variables, jnp.asarray(x)))

    sums, total = None, 0
    for n, stats in ordered_map(one_batch, batches, workers):
        # Per leaf: mean leaves accumulate the mean, var leaves var + mean^2 (below).
        contrib = _moments(stats)
        contrib = jax.tree.map(lambda a: np.asarray(a, np.float64) * n, contrib)
        sums = contrib if sums is None else jax.tree.map(np.add, sums, contrib)
        total += n
    if total == 0:
        raise ValueError("BN re-estimation needs at least one calibration batch")
    avg = jax.tree.map(lambda a: a / total, sums)
    new = _finalize(avg, variables["batch_stats"])
    return dict(variables, batch_stats=new)


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
