"""The fast reward: the loss of the compensated network at an episode's allocation, one
jitted forward pass, no recompilation between episodes.

Precomputation (once per search, :func:`build_grid_reward`): for every prunable group g
and every kept count ``k`` on its grid, the channels removed are the first ``size - k``
of the scorer's removal order (for H-OBS its greedy path: exactly what ``hobs`` keeps at
that count), and every consumer layer of g is compensated as the method's compensator
compensates (:meth:`hobs_jax.methods.Selection.grid`; for H-OBS the refit on the kept
rows, ``W'_K = (H_KK)^-1 H_K,: W`` with the same dampened Hessian,
:func:`hobs_jax.obs.group_grid`; without compensation the removed rows are zeroed). The
change ``W' - W`` is stored as a stack [K_g, *kernel shape] per (group, consumer layer).

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
refit (:func:`hobs_jax.obs.compensate_layers`); groups with no channel-mixing
consumer (ViT q/k) are masked at their producers' output columns without compensation.

BatchNorm: ``bn='batch'`` (default) normalizes with the statistics of the reward batch
itself (train mode with dropout off: :func:`hobs_jax.stats.bn.apply_batch_norm_mode`),
i.e. the reward network is evaluated as after BatchNorm
re-estimation, which is how every allocation is evaluated in the experiments; ``'running'``
keeps the dense network's statistics (the exactness test uses it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.stats import bn as bn_stats

BN_MODES = ("batch", "running")


def compensation_stacks(sel, grids: Sequence[np.ndarray]) -> dict[tuple[int, str, str], np.ndarray]:
    """{(group position, layer path, 'kernel' | 'bias'): [K_g, *shape] float32 deltas}.

    For each group of ``sel.cost.group_ids`` on its grid (``grids[i]`` ascending kept
    counts): the change of each consumer's kernel (and bias) when that group alone keeps
    each count (:meth:`hobs_jax.methods.Selection.grid`, module doc)."""
    out = {}
    for gi, gid in enumerate(sel.cost.group_ids):
        for (path, leaf), arr in sel.grid(gid, np.asarray(grids[gi], np.int64)).items():
            out[(gi, path, leaf)] = arr
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
            logits, _ = bn_stats.apply_batch_norm_mode(model, v, x)
        else:
            logits = model.apply(v, x, train=False)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return ce, acc

    return jax.jit(loss), jax.jit(jax.vmap(loss, in_axes=(None, None, None, 0, None, None))), counter


def build_grid_reward(sel, grids: Sequence[np.ndarray], images: np.ndarray, labels: np.ndarray,
                      *, bn: str = "batch") -> GridReward:
    """The :class:`GridReward` of a :class:`hobs_jax.methods.Selection` on ``grids``
    (module doc). Callers limit the BLAS threads (:func:`hobs_jax.obs.blas_threads`: the
    precomputation is 10x faster with one thread on a shared 2-core machine)."""
    stacks = compensation_stacks(sel, grids)
    return GridReward(sel.task.model, jax.device_get(dict(sel.task.variables)), stacks,
                      np.asarray(images, np.float32), np.asarray(labels, np.int32), bn=bn)
