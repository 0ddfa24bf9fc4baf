"""Group norms: per-channel L2 norm over every member slice of a group.

Not a pruning method (those live in ``hobs_jax.methods``): a generic statistic of the
graph, the "group-level" magnitude of DepGraph (Fang et al., CVPR 2023, Sec. 3.3), used
as the baseline importance and in the README example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from hobs_jax.graph.groups import Graph, layout_channels, layout_groups


def _leaves(variables: Mapping) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def group_l2_scores(graph: Graph, variables: Mapping, *,
                    collections: Sequence[str] = ("params",)) -> dict[int, np.ndarray]:
    """For every group: ``[size]`` channel scores, ``sqrt(sum of squares)`` over all
    members' slices of that channel (weights, biases, norm scales, in ``collections``;
    BN running statistics are not weights and are left out by default).

    Returns a dict group id -> float64 array, for every group (prunable or not).
    """
    flat = _leaves(variables)
    sq = {g.id: np.zeros(g.size) for g in graph.groups}
    for va in graph.axes:
        if va.collection not in collections:
            continue
        leaf = flat.get((va.collection,) + va.path)
        if leaf is None:
            raise ValueError(f"variables lack {va.collection}/{'/'.join(va.path)}")
        a = np.asarray(leaf, dtype=np.float64)
        other = tuple(d for d in range(a.ndim) if d != va.axis)
        per_pos = (a ** 2).sum(axis=other)
        for gid in set(layout_groups(va.layout)):
            ch = layout_channels(va.layout, gid)
            np.add.at(sq[gid], ch[ch >= 0], per_pos[ch >= 0])
    return {gid: np.sqrt(v) for gid, v in sq.items()}
