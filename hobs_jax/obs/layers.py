"""The OBS engine's view of a network: layers, their Hessians and inverses, and the
channel groups that cut across them (no channel graph here: the methods room maps graph
groups onto layers, :func:`hobs_jax.methods.group_roles`).

* :class:`Site` / :class:`ChannelGroup` - which rows (consumers) or columns (producers)
  of which layers' [d_in, d_out] kernel matrices belong to each channel of a group.
* :class:`SolvedLayers` - per layer the undampened Hessian, the dampened one, its
  inverse and the dead-input mask, computed once on demand through the shared
  safeguards (:func:`hobs_jax.obs.linalg.robust_inverse`).
* :func:`layer_weights`, :func:`bn_weights`, :func:`column_weights` - a consumer's
  [d (+1), m] float64 weights and its per-output error weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from hobs_jax.obs.linalg import robust_inverse
from hobs_jax.obs.timing import Timer
from hobs_jax.stats.hessian import HessianStats
from hobs_jax.stats.layers import LayerInfo, kernel_matrix

Path = tuple[str, ...]

__all__ = ["ChannelGroup", "Site", "SolvedLayers", "bn_weights", "column_weights", "copy_tree", "flat_variables",
           "layer_weights", "set_leaf"]


@dataclasses.dataclass(frozen=True)
class Site:
    """One layer a channel group touches: ``channel`` [d_in] for a consumer (the group
    channel of each input row of the kernel matrix), [d_out] for a producer (of each
    output column); -1 where the group is absent."""

    layer: LayerInfo
    channel: np.ndarray


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """A group of ``size`` coupled channels as the OBS engine sees it.

    Attributes:
      id: the group's id (the channel graph's).
      size: channels in the group.
      consumers: channel-mixing layers that read the group (their rows carry the OBS
        saliency and receive the compensation).
      producers: layers that write it (scored by output energy when there is no consumer).
      passthrough: depthwise layers the group crosses channel for channel.
      compensate: whether removing a channel may be compensated in the consumers (False
        for groups normalized over their channels, e.g. under LayerNorm).
      note: why not, or other remarks (reported in ``info['notes']``).
    """

    id: int
    size: int
    consumers: tuple[Site, ...]
    producers: tuple[Site, ...]
    passthrough: tuple[Path, ...] = ()
    compensate: bool = True
    note: str = ""

    @property
    def sites(self) -> tuple[Site, ...]:
        """The layers whose statistics score the group: consumers, else producers."""
        return self.consumers or self.producers


def flat_variables(variables) -> dict[Path, np.ndarray]:
    """{path tuple: leaf} of a variables tree ('params', ...) as stored (no copy)."""
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def layer_weights(flat: Mapping, info: LayerInfo, with_bias: bool) -> np.ndarray:
    """[d (+1), m] float64 kernel matrix of a layer (+ its bias as the last row)."""
    w = kernel_matrix(info, flat[("params",) + info.path + ("kernel",)]).astype(np.float64)
    if with_bias:
        b = np.asarray(flat[("params",) + info.path + ("bias",)], np.float64).reshape(1, -1)
        w = np.concatenate([w, b], axis=0)
    return w


def bn_weights(flat: Mapping, info: LayerInfo) -> np.ndarray | None:
    """[m] ``gamma_j^2 / (var_j + eps)`` of the BatchNorm right after ``info`` (None when
    there is none): an output error measured after that BatchNorm."""
    if info.bn is None:
        return None
    var = flat.get(("batch_stats",) + info.bn + ("var",))
    scale = flat.get(("params",) + info.bn + ("scale",))
    if var is None:
        return None
    var = np.asarray(var, np.float64)
    g2 = np.ones_like(var) if scale is None else np.asarray(scale, np.float64) ** 2
    return g2 / (var + info.bn_eps)


def column_weights(flat: Mapping, info: LayerInfo, *, bn_weighted: bool, relative: bool,
                   w: np.ndarray | None = None, h: np.ndarray | None = None) -> np.ndarray | None:
    """Per-output weights c_j of a consumer's loss: :func:`bn_weights` when
    ``bn_weighted``, divided by the layer's output energy ``1/2 sum_j c_j w_j^T H w_j``
    when ``relative`` (losses become relative reconstruction errors; needs ``w`` [d, m]
    and ``h`` [d, d])."""
    c = bn_weights(flat, info) if bn_weighted else None
    if relative:
        if w is None or h is None:
            raise ValueError(f"{info.name}: relative column weights need the layer's w and h")
        cw = np.ones(w.shape[1]) if c is None else c
        energy = 0.5 * float(np.sum(cw * w * (h @ w)))
        c = cw / max(energy, 1e-30)
    return c


class SolvedLayers:
    """Per layer, computed once when first asked (``solved(info)``): (H [d, d] undampened,
    bias-augmented when the layer has a bias; H_damped; H_damped^-1; dead mask [d]).

    Args:
      stats: the layers' Hessian statistics (:func:`hobs_jax.stats.collect_hessians`).
      damp: relative dampening; ``max_retries``: re-dampening attempts when singular.
      timer: inverses are timed as phase ``inverses``.
    ``raised`` maps layer names to the dampening actually used where it had to grow.
    """

    def __init__(self, stats: HessianStats, damp: float, *, max_retries: int = 6, timer: Timer | None = None):
        self.stats, self.damp, self.max_retries = stats, float(damp), int(max_retries)
        self.timer = timer or Timer()
        self.cache: dict[Path, tuple] = {}
        self.raised: dict[str, float] = {}

    def __call__(self, info: LayerInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if info.path not in self.cache:
            with self.timer("inverses"):
                h = self.stats[info.path].hessian(bias=info.use_bias)
                hd, hinv, lam, dead = robust_inverse(h, self.damp, max_retries=self.max_retries, name=info.name)
                if lam != self.damp:
                    self.raised[info.name] = lam
                self.cache[info.path] = (h, hd, hinv, dead)
        return self.cache[info.path]

    def solve(self, infos: Sequence[LayerInfo]) -> None:
        """Compute the inverses of ``infos`` now (so that a later phase is not charged)."""
        for info in infos:
            self(info)


def set_leaf(tree, path: Sequence[str], value) -> None:
    """``tree[p0][p1]...[pn] = value`` in place (nested dicts)."""
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def copy_tree(variables):
    """A copy of a nested mapping of arrays as plain dicts of numpy arrays."""
    if isinstance(variables, Mapping):
        return {k: copy_tree(v) for k, v in variables.items()}
    return np.array(variables)
