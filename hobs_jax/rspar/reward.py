"""The fast reward: the loss of the H-OBS-compensated network at an episode's allocation,
one jitted forward pass, no recompilation between episodes.

Precomputation (once per search, :func:`build_grid_reward`): for every prunable group g
and every kept count ``k`` on its grid, the channels removed are the first ``size - k``
of H-OBS's greedy removal order (exactly what ``hobs`` keeps at that count), and every
consumer layer of g is refit on its kept rows, ``W'_K = (H_KK)^-1 H_K,: W`` with the same
(dampened) Hessian H-OBS uses (:func:`hobs_jax.methods.obs_math.compensate`). The change
``W' - W`` is stored as a stack [K_g, *kernel shape] per (group, consumer layer).

An episode's network (:class:`GridReward`) is the *full-size* network whose consumer
kernels are ``W + sum_g stack_g[index_g]`` (``jnp.take`` with the per-group grid index,
a traced int vector: one compiled program for every allocation). Removed rows are zero
in ``W'``, so a removed channel is never read, which is the masking point of
``hobs_jax.graph.mask_variables``: the masked network equals the pruned one.

Exactness: a consumer layer that reads a single group (every conv and the classifier of
the ResNets: a block's conv1 reads the stream, its conv2 the block's inner group) gets
exactly the kernel ``hobs`` computes for that allocation, so the grid network equals
``apply_plan`` of H-OBS with those kept counts (tested). A layer reading several groups
(a concatenation) gets the *sum* of per-group refits, an approximation of H-OBS's joint
refit (:func:`hobs_jax.methods.hobs._compensate_all`); groups with no channel-mixing
consumer (ViT q/k) are masked at their producers' output columns without compensation.

BatchNorm: ``bn='batch'`` (default) normalizes with the statistics of the reward batch
itself (train mode), i.e. the reward network is evaluated as after BatchNorm
re-estimation, which is how every allocation is evaluated in the experiments; ``'running'``
keeps the dense network's statistics (the exactness test uses it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.methods.hobs import Selection, _layer_weights
from hobs_jax.methods.obs_math import blas_threads, channel_rows, compensate
from hobs_jax.stats.hessian import dampen

BN_MODES = ("batch", "running")


def _key(path: tuple[str, ...]) -> str:
    return "/".join(path)


def removed_at(order: np.ndarray, size: int, keep: int) -> np.ndarray:
    """Channels removed when ``keep`` of ``size`` are kept: the first ``size - keep`` of
    the greedy removal ``order`` (sorted)."""
    n = int(size) - int(keep)
    if n > len(order):
        raise ValueError(f"keep {keep} of {size} is below the floor the removal path reached ({size - len(order)})")
    return np.sort(np.asarray(order[:n], np.int64))


def compensation_stacks(sel: Selection, grids: Sequence[np.ndarray]) -> dict[tuple[int, str, str], np.ndarray]:
    """{(group position, layer path, 'kernel' | 'bias'): [K_g, *shape] float32 deltas}.

    For each group on its grid (``grids[i]`` ascending kept counts of
    ``sel.task.cost.group_ids[i]``): the change of each consumer's kernel (and bias) when
    that group alone keeps each count, compensated as H-OBS compensates (module doc)."""
    opts, flat = sel.opts, sel.flat
    out = {}
    for gi, gid in enumerate(sel.task.cost.group_ids):
        role = sel.roles[gid]
        size = role.group.size
        order = sel.paths[gid][0]
        counts = np.asarray(grids[gi], np.int64)
        sites = role.consumers or role.producers
        for site in sites:
            info = site.layer
            w = _layer_weights(flat, info, info.use_bias)  # [d_in (+1), m]
            rows_of = channel_rows(site.channel, size, info.name)
            if role.consumers and role.compensate:
                h, hd, _, _ = sel.solved(info)
                hc = dampen(h, 1e-8)[0] if opts.refit else hd
            deltas = np.zeros((len(counts),) + w.shape, np.float64)
            for j, k in enumerate(counts):
                rem = removed_at(order, size, int(k))
                if not len(rem):
                    continue
                sel_rows = np.unique(rows_of[rem].reshape(-1))
                if not role.consumers:  # producer output columns masked
                    deltas[j][:, sel_rows] = -w[:, sel_rows]
                elif role.compensate:
                    deltas[j] = compensate(w, hc, sel_rows, name=info.name) - w
                else:  # normalized group: rows sliced away, no compensation
                    deltas[j][sel_rows] = -w[sel_rows]
            kdt = np.float32
            out[(gi, _key(info.path), "kernel")] = deltas[:, :info.d_in].reshape(
                (len(counts),) + tuple(info.kernel_shape)).astype(kdt)
            if info.use_bias:
                out[(gi, _key(info.path), "bias")] = deltas[:, info.d_in].astype(kdt)
    return out


@dataclasses.dataclass
class GridReward:
    """Loss of the compensated network at per-group grid indices (see module doc).

    Call ``reward(index)`` with ``index`` [G] int -> (cross-entropy, top-1) on the reward
    split; ``reward.batch(index)`` with [B, G] -> ([B], [B]) in one vmapped forward.
    ``traces`` counts how often the forward was traced (1 after any number of calls with
    the same shapes). The jitted functions are cached per (model, stack layout, bn), so a
    second search on the same model reuses the compiled program.
    """

    model: object
    variables: dict
    stacks: dict
    images: np.ndarray
    labels: np.ndarray
    bn: str = "batch"

    def __post_init__(self):
        if self.bn not in BN_MODES:
            raise ValueError(f"bn={self.bn!r}: use one of {BN_MODES}")
        from flax import traverse_util
        self._flatten, self._unflatten = traverse_util.flatten_dict, traverse_util.unflatten_dict
        params = self._flatten(jax.device_get(self.variables["params"]), sep="/")
        self._params = {k: jnp.asarray(v) for k, v in params.items()}
        self._rest = jax.tree.map(jnp.asarray, {k: v for k, v in self.variables.items() if k != "params"})
        by_leaf: dict[str, list] = {}
        stacks = {}
        for i, ((gi, path, leaf), arr) in enumerate(sorted(self.stacks.items())):
            name = f"{path}/{leaf}"
            if name not in self._params:
                raise ValueError(f"compensation stack for {name} has no parameter of that name")
            by_leaf.setdefault(name, []).append((gi, str(i)))
            stacks[str(i)] = jnp.asarray(arr)
        self._by_leaf, self._stacks = by_leaf, stacks
        self._x, self._y = jnp.asarray(self.images), jnp.asarray(self.labels)
        structure = tuple((name, tuple(e)) for name, e in sorted(by_leaf.items()))
        self._one, self._many, self._counter = _compiled(self.model, structure, self.bn)
        self._traces0 = self._counter[0]

    @property
    def traces(self) -> int:
        """Times the forward was traced since this reward was built (0 when an identical
        reward, same model and stack layout, compiled it before in this process)."""
        return self._counter[0] - self._traces0

    def __call__(self, index) -> tuple[float, float]:
        ce, acc = self._one(self._params, self._rest, self._stacks, jnp.asarray(index, jnp.int32),
                            self._x, self._y)
        return float(ce), float(acc)

    def batch(self, index) -> tuple[np.ndarray, np.ndarray]:
        ce, acc = self._many(self._params, self._rest, self._stacks, jnp.asarray(index, jnp.int32),
                             self._x, self._y)
        return np.asarray(ce), np.asarray(acc)

    def variables_at(self, index) -> dict:
        """Full-size variables of the grid network at ``index`` [G] (for tests/inspection)."""
        p = dict(self._params)
        for name, entries in self._by_leaf.items():
            p[name] = p[name] + sum(self._stacks[s][int(index[gi])] for gi, s in entries)
        return dict(self._rest, params=self._unflatten({k: np.asarray(v) for k, v in p.items()}, sep="/"))


@functools.lru_cache(maxsize=16)
def _compiled(model, structure: tuple, bn: str):
    """(jit(loss), jit(vmap(loss)), trace counter) for one model and stack layout."""
    counter = [0]
    by_leaf = dict(structure)
    from flax import traverse_util

    def loss(params, rest, stacks, index, x, y):
        counter[0] += 1  # runs only while tracing
        p = dict(params)
        for name, entries in by_leaf.items():
            p[name] = p[name] + sum(jnp.take(stacks[s], index[gi], axis=0) for gi, s in entries)
        v = dict(rest, params=traverse_util.unflatten_dict(p, sep="/"))
        if bn == "batch" and "batch_stats" in rest:
            logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(v, x, train=False)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return ce, acc

    return jax.jit(loss), jax.jit(jax.vmap(loss, in_axes=(None, None, None, 0, None, None))), counter


def build_grid_reward(sel: Selection, grids: Sequence[np.ndarray], images: np.ndarray, labels: np.ndarray,
                      *, bn: str = "batch") -> GridReward:
    """The :class:`GridReward` of H-OBS's selection ``sel`` on ``grids`` (module doc)."""
    with blas_threads(int(sel.opts.blas_threads) or None):  # see obs_math.blas_threads: 10x here
        stacks = compensation_stacks(sel, grids)
    return GridReward(sel.task.model, jax.device_get(dict(sel.task.variables)), stacks,
                      np.asarray(images, np.float32), np.asarray(labels, np.int32), bn=bn)
