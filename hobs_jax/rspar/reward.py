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
(a concatenation; ViT's attention output projection, whose rows are heads x head dims)
gets the *sum* of per-group refits with every row a group removed zeroed
(:func:`shared_row_masks`), an approximation of H-OBS's joint refit
(:func:`hobs_jax.obs.compensate_layers`); groups with no channel-mixing
consumer (ViT q/k) are masked at their producers' output columns without compensation.

LayerNorm over a pruned stream (ViT's residual stream): zeroing channels is not removing
them there, since the mean and variance divide by the width (``Group.mask_exact`` is
False). The reward network therefore normalizes every LayerNorm that reduces over such a
group with the statistics of the group's *kept* channels at the episode's index (a [K,
size] kept-channel mask stack per group, :func:`norm_masks`); the consumers' removed rows
are zero and the removed channels are read by nothing else, so the grid network equals
the pruned one for these groups too (tested on a ViT).

BatchNorm: ``bn='batch'`` (default) normalizes with the statistics of the reward batch
itself (train mode with dropout off: :func:`hobs_jax.stats.bn.apply_batch_norm_mode`),
i.e. the reward network is evaluated as after BatchNorm
re-estimation, which is how every allocation is evaluated in the experiments; ``'running'``
keeps the dense network's statistics (the exactness test uses it).
"""

from __future__ import annotations

import dataclasses
import functools
import re
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


def shared_row_masks(sel, grids: Sequence[np.ndarray]) -> dict[tuple[int, str], np.ndarray]:
    """{(group position, layer path): [K_g, *kernel shape] kept-row masks} of every layer
    that reads two or more of the groups (:func:`hobs_jax.obs.group_kept_rows`; ViT's
    attention output projection reads the heads and the head-dim groups). The reward
    multiplies such a kernel by its groups' masks after summing their changes, so a row
    any group removed is zero (two groups' deltas overlap on it); a layer read by one group
    needs no mask (its delta zeroes the rows itself)."""
    from hobs_jax.obs import group_kept_rows

    groups = sel.channel_groups()
    readers: dict[str, int] = {}
    for gid in sel.cost.group_ids:
        for site in groups[gid].consumers:
            path = "/".join(site.layer.path)
            readers[path] = readers.get(path, 0) + 1
    out = {}
    for gi, gid in enumerate(sel.cost.group_ids):
        if any(readers["/".join(site.layer.path)] > 1 for site in groups[gid].consumers):
            masks = group_kept_rows(groups[gid], np.asarray(sel.scores.order[gid]), np.asarray(grids[gi]))
            out.update({(gi, path): m for path, m in masks.items() if readers[path] > 1})
    return out


_REDUCED = re.compile(r"^reduced over by \S+ at (\S+)$")


def norm_masks(sel, grids: Sequence[np.ndarray]) -> dict[str, tuple[int, np.ndarray]]:
    """{normalization path 'a/b': (group position, [K_g, size] float32 masks, 1 = kept)} for
    every group of ``sel.cost.group_ids`` that a normalization reduces over (the graph's
    notes "reduced over by ... at PATH"), at each kept count of its grid (the first
    ``size - k`` channels of the scorer's removal order removed). A group whose channels
    sit in the normalization's last axis other than one to one is refused in one line."""
    from hobs_jax.obs import kept_channel_masks

    graph = sel.task.graph
    out: dict[str, tuple[int, np.ndarray]] = {}
    for gi, gid in enumerate(sel.cost.group_ids):
        group = graph.group(gid)
        for note in group.notes:
            m = _REDUCED.match(note)
            if not m:
                continue
            path = m[1]
            scale = [mem for mem in group.members if "/".join(mem.path[:-1]) == path]
            im = scale[0].index_map if scale else None
            if not scale or im is None or (im.offset, im.stride, im.block, im.repeat) != (0, 1, 1, 1) \
                    or scale[0].size != group.size:
                raise ValueError(f"rspar: group {gid} is reduced over at {path} in a layout the reward cannot "
                                 "mask (only a normalization over the group's channels one to one)")
            out[path] = (gi, kept_channel_masks(np.asarray(sel.scores.order[gid]), group.size, grids[gi]))
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
    norms: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)

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
        by_mask: dict[str, list] = {}
        for i, ((gi, path), arr) in enumerate(sorted(self.rows.items())):
            by_mask.setdefault(f"{path}/kernel", []).append((gi, f"r{i}"))
            stacks[f"r{i}"] = jnp.asarray(arr)
        self._by_mask = by_mask
        self._x, self._y = jnp.asarray(self.images), jnp.asarray(self.labels)
        structure = (tuple((name, tuple(e)) for name, e in sorted(by_leaf.items())),
                     tuple((name, tuple(e)) for name, e in sorted(by_mask.items())))
        self._norms = {path: jnp.asarray(m) for path, (_, m) in self.norms.items()}
        norm_groups = tuple(sorted((path, gi) for path, (gi, _) in self.norms.items()))
        self._one, self._many, self._counter = _compiled(self.model, structure, self.bn, norm_groups)
        self._traces0 = self._counter[0]

    @property
    def traces(self) -> int:
        """Times the forward was traced since this reward was built (0 when an identical
        reward, same model and stack layout, compiled it before in this process)."""
        return self._counter[0] - self._traces0

    def __call__(self, index) -> tuple[float, float]:
        ce, acc = self._one(self._params, self._rest, self._stacks, self._norms, jnp.asarray(index, jnp.int32),
                            self._x, self._y)
        return float(ce), float(acc)

    def batch(self, index) -> tuple[np.ndarray, np.ndarray]:
        ce, acc = self._many(self._params, self._rest, self._stacks, self._norms, jnp.asarray(index, jnp.int32),
                             self._x, self._y)
        return np.asarray(ce), np.asarray(acc)

    def apply_at(self, index, x) -> np.ndarray:
        """Logits of the grid network at ``index`` [G] on images ``x``, its LayerNorms
        masked as in the reward (for tests/inspection)."""
        masks = {path: jnp.asarray(m[int(index[gi])]) for path, (gi, m) in self.norms.items()}
        return np.asarray(_forward(self.model, self.variables_at(index), jnp.asarray(x), masks, self.bn))

    def variables_at(self, index) -> dict:
        """Full-size variables of the grid network at ``index`` [G] (for tests/inspection)."""
        p = dict(self._params)
        for name, entries in self._by_leaf.items():
            p[name] = p[name] + sum(self._stacks[s][int(index[gi])] for gi, s in entries)
        for name, entries in self._by_mask.items():
            p[name] = p[name] * np.prod([np.asarray(self._stacks[s][int(index[gi])]) for gi, s in entries], axis=0)
        return dict(self._rest, params=self._unflatten({k: np.asarray(v) for k, v in p.items()}, sep="/"))


def _masked_layer_norm(ln, x, mask):
    """``flax.linen.LayerNorm`` ``ln`` over the last axis with the statistics of the
    channels where ``mask`` [C] is 1: the pruned LayerNorm's output on the kept channels,
    0 on the removed ones (so no consumer reads them, whatever its removed rows hold: a
    q/k kernel's rows and columns are zeroed by two groups' deltas, which overlap)."""
    x = jnp.asarray(x, jnp.float32)
    n = jnp.sum(mask)
    mean = jnp.sum(x * mask, axis=-1, keepdims=True) / n
    var = jnp.sum(mask * (x - mean) ** 2, axis=-1, keepdims=True) / n
    y = (x - mean) * jax.lax.rsqrt(var + ln.epsilon)
    if ln.use_scale:
        y = y * ln.get_variable("params", "scale")
    if ln.use_bias:
        y = y + ln.get_variable("params", "bias")
    return y * mask


def _forward(model, v, x, masks: dict, bn: str):
    """The reward network's forward (train-mode BatchNorm for ``bn='batch'``): LayerNorms at
    the paths of ``masks`` {path: [C]} normalize over their kept channels (module doc);
    every path must be met."""
    import flax.linen as nn

    met = set()

    def masked(next_fun, args, kw, context):
        path = "/".join(context.module.path)
        if path in masks and context.method_name == "__call__":
            if not isinstance(context.module, nn.LayerNorm) or context.module.reduction_axes != -1:
                raise ValueError(f"rspar: {path} reduces over a pruned group and is not a LayerNorm over its "
                                 f"last axis ({type(context.module).__name__}): the reward cannot model it")
            met.add(path)
            return _masked_layer_norm(context.module, args[0] if args else kw["x"], masks[path])
        return next_fun(*args, **kw)

    with nn.intercept_methods(masked):
        if bn == "batch" and "batch_stats" in v:
            logits, _ = bn_stats.apply_batch_norm_mode(model, v, x)
        else:
            logits = model.apply(v, x, train=False)
    if set(masks) - met:
        raise ValueError(f"rspar: the forward pass never called {sorted(set(masks) - met)[0]}, which the graph "
                         "says normalizes a pruned group: the reward cannot model it")
    return logits


@functools.lru_cache(maxsize=16)
def _compiled(model, structure: tuple, bn: str, norm_groups: tuple = ()):
    """(jit(loss), jit(vmap(loss)), trace counter) for one model, stack layout and set of
    masked normalizations ((path, group position) pairs)."""
    counter = [0]
    by_leaf, by_mask = dict(structure[0]), dict(structure[1])
    from flax import traverse_util

    def loss(params, rest, stacks, norms, index, x, y):
        counter[0] += 1  # runs only while tracing
        p = dict(params)
        for name, entries in by_leaf.items():
            p[name] = p[name] + sum(jnp.take(stacks[s], index[gi], axis=0) for gi, s in entries)
        for name, entries in by_mask.items():
            for gi, s in entries:
                p[name] = p[name] * jnp.take(stacks[s], index[gi], axis=0)
        v = dict(rest, params=traverse_util.unflatten_dict(p, sep="/"))
        masks = {path: jnp.take(norms[path], index[gi], axis=0) for path, gi in norm_groups}
        logits = _forward(model, v, x, masks, bn)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return ce, acc

    return jax.jit(loss), jax.jit(jax.vmap(loss, in_axes=(None, None, None, None, 0, None, None))), counter


def build_grid_reward(sel, grids: Sequence[np.ndarray], images: np.ndarray, labels: np.ndarray,
                      *, bn: str = "batch") -> GridReward:
    """The :class:`GridReward` of a :class:`hobs_jax.methods.Selection` on ``grids``
    (module doc). Callers limit the BLAS threads (:func:`hobs_jax.obs.blas_threads`: the
    precomputation is 10x faster with one thread on a shared 2-core machine)."""
    stacks = compensation_stacks(sel, grids)
    return GridReward(sel.task.model, jax.device_get(dict(sel.task.variables)), stacks,
                      np.asarray(images, np.float32), np.asarray(labels, np.int32), bn=bn,
                      norms=norm_masks(sel, grids), rows=shared_row_masks(sel, grids))
