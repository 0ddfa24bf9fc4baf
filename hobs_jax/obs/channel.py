"""Channel OBS: greedy removal paths of a channel group, compensation of its consumers,
and the precomputed per-count compensations R-SPAR's reward is built from.

For a :class:`~hobs_jax.obs.layers.ChannelGroup` with consumers l (kernel matrices
``W_l`` [d_l, m_l], Hessians ``H_l`` of their inputs), removing channel c removes the
rows ``Q_c`` of every consumer; the saliency sums the OBS losses over consumers
(:class:`~hobs_jax.obs.linalg.Consumer`), the greedy path removes the cheapest channel,
compensates every consumer and downdates their inverse Hessians, and so on
(:func:`select`). Groups that cannot be compensated (normalized over the group) are
ranked by their independent no-compensation losses; groups with no consumer by the
output energy ``1/2 sum_cols w^T H w`` of their producers' columns.

:func:`compensate_layers` refits every consumer on its kept rows, ``W'_K = (H_KK)^-1
H_K,: W`` (dampened H: the composed OBS updates; undampened, ``refit``: least squares).
:func:`group_grid` precomputes, for one group and a grid of kept counts, the change of
every consumer's kernel when that group alone keeps each count (R-SPAR's fast reward,
:mod:`hobs_jax.rspar.reward`).

References: Hassibi & Stork (NIPS 1993); OBC (Frantar & Alistarh, NeurIPS 2022);
ZipLM / oBERT structured OBS (Kurtic et al.); OSSCAR (Meng et al., 2024). docs/hobs.md.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from hobs_jax.obs.layers import ChannelGroup, Path, SolvedLayers, column_weights, copy_tree, layer_weights, set_leaf
from hobs_jax.obs.linalg import Consumer, channel_rows, compensate, dampen, greedy_path

__all__ = ["compensate_layers", "consumers", "group_grid", "removed_rows", "select"]

#: How :func:`select` scored a group: greedy OBS with compensation, independent OBS
#: losses without it, producer output energy, or nothing removed.
HOW = ("obs", "obs_nocomp", "energy", "none")


def consumers(group: ChannelGroup, flat: Mapping, solved: SolvedLayers, *, bn_weighted: bool = True,
              relative: bool = False) -> list[Consumer]:
    """Fresh working states of the group's consumers: float64 weights with dead rows
    zeroed, a private copy of H_damped^-1 (or H_damped itself when the group is not
    compensated), per-output weights (:func:`~hobs_jax.obs.layers.column_weights`)."""
    out = []
    for site in group.consumers:
        info = site.layer
        _, hd, hinv, dead = solved(info)
        w = layer_weights(flat, info, info.use_bias)
        w[dead] = 0.0
        rows = channel_rows(site.channel, group.size, info.name)
        colw = column_weights(flat, info, bn_weighted=bn_weighted, relative=relative, w=w, h=hd)
        if group.compensate:
            out.append(Consumer(info.name, w, hinv.copy(), rows, colw))
        else:
            out.append(Consumer(info.name, w, hinv, rows, colw, compensate=False, h=hd))
    return out


def select(group: ChannelGroup, n_remove: int, flat: Mapping, solved: SolvedLayers, *, per_step: int = 1,
           bn_weighted: bool = True, relative: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(removal order [n_remove], marginal losses [n_remove], how) for one group
    (module doc); ``per_step`` channels per greedy step."""
    size = group.size
    if n_remove <= 0:
        return np.zeros(0, np.int64), np.zeros(0), "none"
    if group.consumers:
        cons = consumers(group, flat, solved, bn_weighted=bn_weighted, relative=relative)
        if not group.compensate:  # independent no-compensation losses: one sort
            s = functools.reduce(np.add, (c.saliency(np.ones(size, bool)) for c in cons))
            order = np.argsort(s, kind="stable")[:n_remove]
            return order, s[order], "obs_nocomp"
        order, losses = greedy_path(cons, n_remove, int(per_step))
        return order, losses, "obs"
    if group.producers:
        energy = np.zeros(size)
        for site in group.producers:
            info = site.layer
            h, _, _, _ = solved(info)
            w = layer_weights(flat, info, info.use_bias)
            for c, cols in enumerate(channel_rows(site.channel, size, info.name)):
                wc = w[:, cols]
                energy[c] += 0.5 * float(np.sum(wc * (h @ wc)))
        order = np.argsort(energy, kind="stable")[:n_remove]
        return order, energy[order], "energy"
    raise ValueError(f"group {group.id} has neither consumers nor producers with statistics")


def removed_rows(groups: Mapping[int, ChannelGroup], removed: Mapping[int, np.ndarray]) -> dict[Path, list]:
    """{consumer layer path: [LayerInfo, [removed input rows, ...], every group that
    removed rows compensable]} for the channels ``removed`` (group id -> channels)."""
    by_layer: dict[Path, list] = {}
    for gid, group in groups.items():
        rem = removed.get(gid)
        if rem is None or not len(rem):
            continue
        for site in group.consumers:
            rows = channel_rows(site.channel, group.size, site.layer.name)[rem].reshape(-1)
            by_layer.setdefault(site.layer.path, [site.layer, [], True])
            entry = by_layer[site.layer.path]
            entry[1].append(rows)
            entry[2] = entry[2] and group.compensate
    return by_layer


def compensate_layers(variables, groups: Mapping[int, ChannelGroup], removed: Mapping[int, np.ndarray],
                      flat: Mapping, solved: SolvedLayers, *, refit: bool = False) -> dict:
    """A full-size copy of ``variables`` in which every consumer of a removed channel is
    refit on its kept rows (module doc; layers reading a non-compensable group are left
    as they are: their rows are just sliced away). Kernels keep their dtypes."""
    out = copy_tree(variables)
    for path, (info, rows, ok) in removed_rows(groups, removed).items():
        if not ok:
            continue
        h, hd, _, _ = solved(info)
        hc = dampen(h, 1e-8)[0] if refit else hd
        w = layer_weights(flat, info, info.use_bias)
        new = compensate(w, hc, np.unique(np.concatenate(rows)), name=info.name)
        dt = np.asarray(flat[("params",) + path + ("kernel",)]).dtype
        set_leaf(out, ("params",) + path + ("kernel",), new[:info.d_in].reshape(info.kernel_shape).astype(dt))
        if info.use_bias:
            set_leaf(out, ("params",) + path + ("bias",), new[info.d_in].astype(dt))
    return out


def removed_at(order: np.ndarray, size: int, keep: int) -> np.ndarray:
    """Channels removed when ``keep`` of ``size`` are kept: the first ``size - keep`` of
    the removal ``order`` (sorted)."""
    n = int(size) - int(keep)
    if n > len(order):
        raise ValueError(f"keep {keep} of {size} is below the floor the removal path reached ({size - len(order)})")
    return np.sort(np.asarray(order[:n], np.int64))


def group_grid(group: ChannelGroup, order: np.ndarray, counts: np.ndarray, flat: Mapping,
               solved: SolvedLayers | None = None, *, compensate_rows: bool = True,
               refit: bool = False) -> dict[tuple[str, str], np.ndarray]:
    """{(layer path 'a/b', 'kernel' | 'bias'): [K, *shape] float32 weight changes} when
    this group alone keeps each of ``counts`` [K] channels (the first ``size - k`` of
    ``order`` removed).

    A consumer of a compensable group is refit on its kept rows (as
    :func:`compensate_layers`) when ``compensate_rows``; otherwise its removed rows are
    zeroed. A group with no consumer has its producers' output columns zeroed. Removed
    rows are zero either way, so the full-size network with these changes equals the
    pruned one (the masking point of ``hobs_jax.graph.mask_variables``).
    """
    size = group.size
    counts = np.asarray(counts, np.int64)
    out = {}
    for site in group.sites:
        info = site.layer
        w = layer_weights(flat, info, info.use_bias)  # [d_in (+1), m]
        rows_of = channel_rows(site.channel, size, info.name)
        fit = bool(group.consumers) and group.compensate and compensate_rows
        if fit:
            if solved is None:
                raise ValueError(f"group {group.id}: compensated grids need the solved layer Hessians")
            h, hd, _, _ = solved(info)
            hc = dampen(h, 1e-8)[0] if refit else hd
        deltas = np.zeros((len(counts),) + w.shape, np.float64)
        for j, k in enumerate(counts):
            rem = removed_at(order, size, int(k))
            if not len(rem):
                continue
            sel_rows = np.unique(rows_of[rem].reshape(-1))
            if not group.consumers:  # producer output columns masked
                deltas[j][:, sel_rows] = -w[:, sel_rows]
            elif fit:
                deltas[j] = compensate(w, hc, sel_rows, name=info.name) - w
            else:  # rows sliced away, nothing compensated
                deltas[j][sel_rows] = -w[sel_rows]
        key = "/".join(info.path)
        kernel = deltas[:, :info.d_in].reshape((len(counts),) + tuple(info.kernel_shape))
        out[(key, "kernel")] = kernel.astype(np.float32)
        if info.use_bias:  # the bias's own shape: (heads, head_dim) for a DenseGeneral q/k/v projection
            bias_shape = np.shape(flat[("params",) + info.path + ("bias",)])
            out[(key, "bias")] = deltas[:, info.d_in].reshape((len(counts),) + bias_shape).astype(np.float32)
    return out


def kept_channel_masks(order: np.ndarray, size: int, counts: np.ndarray) -> np.ndarray:
    """[K, size] float32, 1 where a channel is kept when ``counts[j]`` of ``size`` are kept
    (the first ``size - k`` of the removal ``order`` removed, :func:`removed_at`)."""
    counts = np.asarray(counts, np.int64)
    masks = np.ones((len(counts), int(size)), np.float32)
    for j, k in enumerate(counts):
        masks[j, removed_at(order, size, int(k))] = 0.0
    return masks


def group_kept_rows(group: ChannelGroup, order: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """{consumer layer path 'a/b': [K, *kernel shape] float32, 1 where the kernel entry's
    input row is kept} when this group alone keeps each of ``counts`` (the rows
    :func:`group_grid` zeroes). Empty for a group without consumers. A layer that reads
    several groups multiplies their masks, so a row any of them removed stays zero after
    their grid changes are summed (R-SPAR's grid reward)."""
    if not group.consumers:
        return {}
    kept = kept_channel_masks(order, group.size, counts)  # [K, size]
    out = {}
    for site in group.sites:
        info = site.layer
        rows_of = channel_rows(site.channel, group.size, info.name)  # [size, q] rows of each channel
        m = np.ones((len(kept), info.d_in), np.float32)
        for c in range(group.size):
            m[:, rows_of[c]] = kept[:, c:c + 1]
        width = int(np.prod(info.kernel_shape)) // info.d_in
        out["/".join(info.path)] = np.repeat(m[:, :, None], width, axis=2).reshape(
            (len(counts),) + tuple(info.kernel_shape))
    return out

