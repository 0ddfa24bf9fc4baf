"""Channel masks on an unpruned network: what training-time methods use to try a
sub-network before any surgery (JTP's episodes, StructAlign's generator, BilevelPruning's
static and dynamic gates).

A mask ``m_g`` [size] for channel group g multiplies the *output* of every channel of g
where it is produced: the BatchNorm right after a producer layer (scale and bias, so the
normalized output becomes ``m * y``), or, without a BatchNorm, the producer's kernel
columns and bias; a depthwise layer the group crosses channel for channel is scaled the
same way, so a zeroed channel stays zero through it. Because ``relu(m y) = m relu(y)``
for ``m >= 0`` and a residual sum of ``m y_i`` is ``m sum y_i``, a 0/1 mask gives exactly
the network without those channels: in eval mode the masked network's logits equal those
of the network cut by :func:`hobs_jax.graph.apply_plan` (tested), and a soft mask in
(0, 1) is a differentiable relaxation of it (what generators and gates are trained
through). Groups normalized over their channels (LayerNorm streams, ``Group.mask_exact``
False) or produced by a layer with several output axes (attention heads) are not
maskable; the methods leave them at full width.

Also here: the straight-through binary concrete gate the three methods share
(:func:`st_gate`), the differentiable cost of soft kept counts (:class:`SoftCost`), the
partial L2 penalty that pulls chosen channels toward zero (:func:`partial_l2`), and the
forward passes with masks (:meth:`ChannelMasks.logits`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hobs_jax.graph import layout_channels
from hobs_jax.methods.depgraph import Slot, group_slots
from hobs_jax.methods.obs_groups import group_roles
from hobs_jax.stats.layers import trace_layers

__all__ = ["ChannelMasks", "SoftCost", "host_like", "partial_l2", "st_gate", "topk_mask"]


_BY_GRAPH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _slot(path, axis: int, channel: np.ndarray) -> Slot:
    channel = np.asarray(channel, np.int64)
    pos = np.flatnonzero(channel >= 0)
    return Slot(tuple(path), int(axis), pos, channel[pos])


class ChannelMasks:
    """Where each maskable group's channel outputs are scaled (module doc).

    Attributes:
      gids: the maskable prunable groups, in graph order; ``sizes`` group id -> size.
      sites: group id -> [Slot] (paths inside ``params``) the mask multiplies.
      gates: group id -> (producer layer path, its BatchNorm path) for groups written by
        exactly one layer followed by a BatchNorm and crossing no depthwise layer: the
        groups an input-dependent gate may switch (:meth:`logits` with ``gate_fn``).
      skipped: group id -> why a prunable group is not maskable.
    """

    def __init__(self, task):
        params = traverse_util.flatten_dict(dict(task.variables["params"]))
        infos = trace_layers(task.model, task.variables, task.input_shape)
        roles = group_roles(task.graph, infos)
        self.sites: dict[int, list[Slot]] = {}
        self.gates: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.skipped: dict[int, str] = {}
        self.sizes = {g.id: int(g.size) for g in task.graph.groups}
        for g in task.graph.prunable:
            role = roles.get(g.id)
            why = None if g.mask_exact else "normalized over its channels"
            sites: list[Slot] = []
            layers = [(s.layer, s.channel) for s in role.producers] if role is not None else []
            for path in (role.passthrough if role is not None else ()):
                va = task.graph.axis("params", tuple(path) + ("kernel",), 3)
                if va is not None:
                    layers.append((infos[tuple(path)], layout_channels(va.layout, g.id)))
            if not layers:
                why = why or "no producer layer"
            for info, channel in layers:
                if why:
                    break
                if info.bn is not None and info.bn + ("scale",) in params:
                    sites.append(_slot(info.bn + ("scale",), 0, channel))
                    if info.bn + ("bias",) in params:
                        sites.append(_slot(info.bn + ("bias",), 0, channel))
                elif info.bn is not None:
                    why = f"{'/'.join(info.bn)} has no scale to mask"
                elif len(info.out_axes) == 1:
                    sites.append(_slot(info.path + ("kernel",), info.out_axes[0], channel))
                    if info.use_bias:
                        sites.append(_slot(info.path + ("bias",), 0, channel))
                else:
                    why = f"{info.name} writes it over several output axes"
            if why:
                self.skipped[g.id] = why
                continue
            self.sites[g.id] = sites
            producers = role.producers
            if (len(producers) == 1 and not role.passthrough and producers[0].layer.bn is not None
                    and producers[0].layer.kind in ("conv", "dense")
                    and (producers[0].channel >= 0).all()):
                self.gates[g.id] = (producers[0].layer.path, producers[0].layer.bn)
        self.gids = tuple(g for g in (x.id for x in task.graph.prunable) if g in self.sites)
        self.model = task.model
        self.slots = group_slots(task.graph, include_bias=True, groups=self.gids)
        self.param_shapes = {k: tuple(np.shape(v)) for k, v in params.items()}
        self.coef_keys = tuple(sorted({((s.path, s.axis), self.param_shapes[s.path][s.axis])
                                       for sl in self.slots.values() for s in sl}))
        self._cache: dict = {}

    @classmethod
    def of(cls, task) -> ChannelMasks:
        """The masks of ``task``'s network, built once per graph (several runs on one task
        share them and their compiled functions, :meth:`cached`)."""
        cached = _BY_GRAPH.get(task.graph)
        if cached is None or cached.model != task.model or cached.param_shapes != {
                k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(task.variables["params"])).items()}:
            cached = cls(task)
            _BY_GRAPH[task.graph] = cached
        return cached

    def cached(self, key, build: Callable[[], Any]) -> Any:
        """``build()`` once per key for these masks (jitted steps of the methods)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def accuracy_fn(self) -> Callable:
        """jit(variables, masks tuple in :attr:`gids` order, x, y) -> top-1 of the masked
        network with BatchNorm on the batch's statistics."""
        def build():
            @jax.jit
            def accuracy(variables, mask_arrays, x, y):
                logits = self.logits(variables, dict(zip(self.gids, mask_arrays)), x)
                return jnp.mean(jnp.argmax(logits, -1) == y)
            return accuracy
        return self.cached("accuracy", build)

    # -- masks ------------------------------------------------------------------------------
    def apply(self, params: Mapping, masks: Mapping[int, jax.Array]) -> dict:
        """``params`` with every site of every group in ``masks`` ({gid: [size]}) scaled by
        its channel's mask value; differentiable in ``params`` and ``masks``."""
        flat = traverse_util.flatten_dict(dict(params))
        mult: dict[tuple, jax.Array] = {}
        for gid, m in masks.items():
            m = jnp.asarray(m)
            for s in self.sites[gid]:
                leaf = flat[s.path]
                key = (s.path, s.axis)
                vec = jnp.ones(leaf.shape[s.axis], m.dtype).at[s.positions].set(m[s.channels],
                                                                                 unique_indices=True)
                mult[key] = mult[key] * vec if key in mult else vec
        for (path, axis), vec in mult.items():
            leaf = flat[path]
            shape = [1] * leaf.ndim
            shape[axis] = leaf.shape[axis]
            flat[path] = leaf * vec.reshape(shape).astype(leaf.dtype)
        return traverse_util.unflatten_dict(flat)

    def logits(self, variables: Mapping, masks: Mapping[int, jax.Array], x: jax.Array, *,
               train_bn: bool = True, gate_fn: Callable | None = None) -> jax.Array:
        """[B, K] logits of the masked network on ``x`` [B, ...].

        ``train_bn``: normalize with the batch's statistics (what the network gives after
        BatchNorm re-estimation, which every row of our comparisons gets) instead of the
        stored running ones; the running statistics are not updated. ``gate_fn(gid,
        pooled) -> [B, size]``: an input-dependent gate multiplying the BatchNorm output
        of each group in :attr:`gates`, from its producer's input averaged over every
        axis but the batch and channel ones (BilevelPruning's dynamic gates).
        """
        v = dict(variables)
        v["params"] = self.apply(v["params"], masks)

        def run():
            if train_bn and "batch_stats" in v:
                out, _ = self.model.apply(v, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(0)})
                return out
            return self.model.apply(v, x, train=False)

        if gate_fn is None:
            return run()
        by_layer = {layer: gid for gid, (layer, _) in self.gates.items()}
        by_bn = {bn: gid for gid, (_, bn) in self.gates.items()}
        pooled: dict[int, jax.Array] = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            path = tuple(context.module.path)
            if path in by_layer and args:
                a = args[0]
                pooled[by_layer[path]] = a.mean(axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a
            y = next_fun(*args, **kwargs)
            gid = by_bn.get(path)
            if gid is not None and gid in pooled:
                g = gate_fn(gid, pooled[gid])  # [B, size]
                y = y * g.reshape(g.shape[:1] + (1,) * (y.ndim - 2) + g.shape[1:]).astype(y.dtype)
            return y

        with nn.intercept_methods(interceptor):
            return run()

    def full(self) -> dict[int, np.ndarray]:
        """All-ones masks for every maskable group."""
        return {g: np.ones(self.sizes[g], np.float32) for g in self.gids}


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """[size] 0/1 float32 mask keeping the ``k`` highest ``scores`` (ties: lower index,
    the rule of :func:`hobs_jax.graph.plan_from_scores`)."""
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    m = np.zeros(len(scores), np.float32)
    m[order[:int(k)]] = 1.0
    return m


def st_gate(logits: jax.Array, key: jax.Array | None, temperature: float, offset: float) -> jax.Array:
    """Binary concrete gate with a straight-through hard value (Maddison et al., 2017;
    the ``gumbel_softmax_sample`` + ``hard_concrete`` pair of the authors' group's public
    pruning code, gaosh/NPPM ``models/hypernet.py``): ``soft = sigmoid((logits + offset +
    noise) / temperature)`` with logistic noise (none when ``key`` is None), forward value
    ``soft >= 0.5`` as 0/1, gradient that of ``soft``. Same shape as ``logits``."""
    z = logits + offset
    if key is not None:
        u = jax.random.uniform(key, logits.shape, minval=1e-6, maxval=1 - 1e-6)
        z = z + jnp.log(u) - jnp.log1p(-u)
    soft = jax.nn.sigmoid(z / temperature)
    hard = (soft >= 0.5).astype(soft.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


class SoftCost:
    """The exact cost model (:class:`hobs_jax.allocation.CostModel`) evaluated at real
    kept counts, in jax: :meth:`ratio` is differentiable, so a generator's FLOPs (or
    params) term sees ``k_g = sum_c m_{g,c}``. The polynomial is carried as arrays
    (:attr:`arrays`), so jitted steps take it as an argument and one compilation serves
    both metrics and every target."""

    def __init__(self, cost, metric: str):
        if metric not in ("macs", "params"):
            raise ValueError(f"metric={metric!r}: use 'macs' or 'params'")
        self.gids = tuple(cost.group_ids)
        coef = np.asarray(cost.macs_coef if metric == "macs" else cost.params_coef, np.float64)
        exp = np.asarray(cost.macs_exp if metric == "macs" else cost.params_exp, np.float64)
        sizes = np.asarray(cost.sizes, np.float64)
        full = float(np.sum(coef * np.prod(sizes[None, :] ** exp, axis=1)))
        #: (coef / full [L], exp [L, G], sizes [G]) as float32 arrays
        self.arrays = (jnp.asarray(coef / full, jnp.float32), jnp.asarray(exp, jnp.float32),
                       jnp.asarray(sizes, jnp.float32))

    @staticmethod
    def ratio_of(arrays, counts: jax.Array) -> jax.Array:
        """Kept fraction at ``counts`` [G] (cost-model group order) given :attr:`arrays`."""
        coef, exp, _ = arrays
        # k ** e with e == 0 must be 1 even at k == 0 (a group kept at zero channels).
        powers = jnp.where(exp == 0, 1.0, jnp.power(jnp.maximum(counts[None, :], 1e-12), exp))
        return jnp.sum(coef * jnp.prod(powers, axis=1))

    def counts(self, values: Mapping[int, jax.Array]) -> jax.Array:
        """[G] counts from {gid: scalar}; groups missing keep their full size."""
        sizes = self.arrays[2]
        return jnp.stack([jnp.asarray(values[g], jnp.float32) if g in values else sizes[i]
                          for i, g in enumerate(self.gids)])

    def ratio(self, values: Mapping[int, jax.Array]) -> jax.Array:
        """Scalar kept fraction at {gid: count} (missing groups at full size)."""
        return self.ratio_of(self.arrays, self.counts(values))


def resource_loss(ratio: jax.Array, target: float, two_sided: bool = True) -> jax.Array:
    """The authors' group's FLOPs constraint (gaosh/DDNP ``utils.py``, ``loss_type='log'``):
    ``log(max(r, p) / p)`` (one-sided) or ``|log(r / p)|`` (two-sided, their ``_k`` variant)."""
    r = jnp.maximum(ratio, 1e-6)
    if two_sided:
        return jnp.abs(jnp.log(r / target))
    return jnp.log(jnp.maximum(r, target) / target)


def partial_l2(masks: ChannelMasks, weights: Mapping[int, np.ndarray], coef: float) -> Callable[[Any], jax.Array]:
    """``params -> coef/2 * sum_g sum_c weights_{g,c} * ||w_{g,c}||^2`` over every member
    slice of channel c of group g (kernels of its producers and consumers, norm scales
    and biases: :func:`hobs_jax.methods.depgraph.group_slots` with biases). With
    ``weights`` = 1 - (the proposed sub-network's mask) this is StructAlign's partial
    regularization; with 1 on the channels an agent removed, JTP's alignment term.

    The per-channel weights are scattered once, on the host, into one broadcastable
    coefficient array per parameter; the sum is one jitted function per
    :class:`ChannelMasks` taking them as arguments, so a new term (each round's) costs
    no compilation, inside the engine's jitted step or eagerly."""
    vecs = {key: np.zeros(n, np.float32) for key, n in masks.coef_keys}
    for gid, v in weights.items():
        v = np.asarray(v, np.float32)
        for s in masks.slots[gid]:
            vecs[(s.path, s.axis)][s.positions] += v[s.channels]
    consts = tuple(jnp.asarray(vecs[key]) for key, _ in masks.coef_keys)
    fn = masks.cached("partial_l2", lambda: _partial_fn(masks))

    def loss(params):
        return 0.5 * coef * fn(params, consts)

    return loss


def _partial_fn(masks: ChannelMasks):
    keys = [key for key, _ in masks.coef_keys]

    @jax.jit
    def total(params, consts):
        flat = traverse_util.flatten_dict(dict(params))
        out = jnp.zeros((), jnp.float32)
        for (path, axis), c in zip(keys, consts):
            leaf = flat[path].astype(jnp.float32)
            shape = [1] * leaf.ndim
            shape[axis] = leaf.shape[axis]
            out = out + jnp.sum(c.reshape(shape) * leaf * leaf)
        return out

    return total


def host_like(trained: Mapping, like: Mapping) -> dict:
    """Host (numpy) copies of ``trained`` restricted to the collections of ``like``, with
    ``like``'s dtypes (what the driver's own training phase returns)."""
    return jax.tree.map(lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype),
                        {k: trained[k] for k in like}, dict(like))
