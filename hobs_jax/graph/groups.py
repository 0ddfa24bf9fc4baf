"""The channel dependency graph as a small immutable value: groups of coupled channel axes.

A :class:`Graph` lists, for one model at one set of widths, every *group*: a set of
variable axes (and the activation axes between them) whose channels must be removed
together. Each variable axis carries a :data:`Layout` telling how group channels sit in
it: usually one group, contiguously (``Atom``); after a flatten into a dense layer the
axis is the row-major product of spatial axes and the channel axis (``Composite("prod",
...)``); a concatenation makes a ``Composite("sum", ...)`` with offsets.

What the text dump counts (its last line, ``N groups, C channels``): N is the number of
*prunable* groups and C the sum of their sizes; groups listed as not prunable (the input
channels, the logits, anything an unsupported primitive touched) are shown but not
counted. Axes that are not channels at all (kernel windows, feature-map and sequence
axes) are not groups and are not shown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Sequence, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Atom:
    """One space of ``size`` indices; ``group`` is its group id, or None when the axis is
    not a (listed) channel group and is always kept whole."""

    group: int | None
    size: int


@dataclasses.dataclass(frozen=True)
class Composite:
    """A row-major product ("prod") or a concatenation ("sum") of parts."""

    kind: str
    parts: tuple["Layout", ...]

    @property
    def size(self) -> int:
        sizes = [p.size for p in self.parts]
        return int(np.prod(sizes)) if self.kind == "prod" else int(sum(sizes))


Layout = Union[Atom, Composite]


def layout_groups(node: Layout) -> list[int]:
    """Group ids appearing in ``node``, in part order."""
    if isinstance(node, Atom):
        return [] if node.group is None else [node.group]
    return [g for p in node.parts for g in layout_groups(p)]


def layout_indices(node: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Positions of ``node`` that survive when group g keeps channels ``keep[g]``
    (row-major product for "prod", offset concatenation for "sum")."""
    if isinstance(node, Atom):
        if node.group is not None and node.group in keep:
            return np.asarray(keep[node.group], dtype=np.int64)
        return np.arange(node.size, dtype=np.int64)
    parts = [layout_indices(p, keep) for p in node.parts]
    if node.kind == "sum":
        offsets = np.cumsum([0] + [p.size for p in node.parts[:-1]])
        return np.concatenate([idx + off for idx, off in zip(parts, offsets)])
    out = np.zeros(1, dtype=np.int64)
    for p, idx in zip(node.parts, parts):
        out = (out[:, None] * p.size + idx[None, :]).reshape(-1)
    return out


def layout_channels(node: Layout, group: int) -> np.ndarray:
    """For every position of ``node``: the channel of ``group`` it belongs to, or -1."""
    if isinstance(node, Atom):
        return np.arange(node.size) if node.group == group else np.full(node.size, -1)
    parts = [layout_channels(p, group) for p in node.parts]
    if node.kind == "sum":
        return np.concatenate(parts)
    out = np.full(1, -1)
    for ch in parts:
        out = np.maximum(out[:, None], ch[None, :]).reshape(-1)
    return out


@dataclasses.dataclass(frozen=True)
class IndexMap:
    """Where channel c of a group sits in one variable axis:
    ``offset + c * stride + r * repeat_stride + j`` for ``r < repeat``, ``j < block``.

    Contiguous is (0, 1, 1, 1, 0). A flatten [H, W, C] -> H*W*C gives stride 1,
    repeat H*W, repeat_stride C; a merged [heads, dim] axis gives, for heads, block =
    stride = dim. ``affine`` is False for layouts this form cannot express (then only
    the layout describes it; surgery always uses the layout).
    """

    offset: int = 0
    stride: int = 1
    block: int = 1
    repeat: int = 1
    repeat_stride: int = 0
    affine: bool = True

    @property
    def contiguous(self) -> bool:
        return self == IndexMap()

    def describe(self) -> str:
        if self.contiguous:
            return ""
        if not self.affine:
            return "(general)"
        bits = []
        if self.offset:
            bits.append(f"+{self.offset}")
        if self.block > 1 or self.stride != 1:
            bits.append(f"blocks of {self.block} stride {self.stride}")
        if self.repeat > 1:
            bits.append(f"x{self.repeat} every {self.repeat_stride}")
        return "(" + ", ".join(bits) + ")"

    @staticmethod
    def from_channels(channels: np.ndarray, size: int) -> "IndexMap":
        """The map of a group whose channel at each axis position is ``channels`` (-1:
        another group's or no group's position)."""
        counts = np.bincount(channels[channels >= 0], minlength=size)
        n = int(counts[0]) if size else 0
        if n == 0 or not (counts == n).all():
            return IndexMap(affine=False)
        pos = np.argsort(channels, kind="stable")[len(channels) - size * n:].reshape(size, n)
        p0 = pos[0]
        stride = int(pos[1, 0] - p0[0]) if size > 1 else 1
        if not np.array_equal(pos, p0[None, :] + stride * np.arange(size)[:, None]):
            return IndexMap(affine=False)
        runs = np.flatnonzero(np.diff(p0) != 1)
        block = int(runs[0] + 1) if len(runs) else n
        repeat = n // block
        rstride = int(p0[block] - p0[0]) if repeat > 1 else 0
        expect = (p0[0] + np.arange(repeat)[:, None] * rstride + np.arange(block)[None, :]).reshape(-1)
        if n % block or not np.array_equal(expect, p0):
            return IndexMap(affine=False)
        return IndexMap(int(p0[0]), stride, block, repeat, rstride)


@dataclasses.dataclass(frozen=True)
class VarAxis:
    """One axis of one variable: ``collection`` ("params", "batch_stats"), module
    ``path`` plus leaf name, ``axis``, and how groups sit in it."""

    collection: str
    path: tuple[str, ...]
    axis: int
    layout: Layout

    @property
    def key(self) -> tuple[str, tuple[str, ...], int]:
        return (self.collection, self.path, self.axis)


@dataclasses.dataclass(frozen=True)
class Member:
    """A variable axis that holds channels of a group (``index_map`` says where)."""

    collection: str
    path: tuple[str, ...]
    axis: int
    size: int
    index_map: IndexMap

    @property
    def name(self) -> str:
        return "/".join(self.path)


@dataclasses.dataclass(frozen=True)
class Group:
    """Coupled channels: removing channel c removes it from every member.

    Attributes:
      id: position in topological order of first producer (deterministic).
      size: number of channels.
      members: variable axes holding these channels.
      widths: zoo width entries this group sizes (empty for non-zoo modules).
      prunable: False for channels tied to the network's input/output or to anything
        the tracer cannot follow; ``reason`` then says which primitive at which layer.
      notes: facts that do not block pruning (a reduction over the channel axis, e.g.
        LayerNorm statistics: there the pruned network is not the masked original).
      kind: "residual", "heads", "head_dim" or "channels".
      anchor: (collection, path, axis, k): the group is the k-th group in the layout of
        its first member axis; finds the same group in a pruned copy of the network.
      activations: the nonlinearities applied to these channels in the forward pass
        ("relu", "clip" (a max/min with a constant other than 0: ReLU6), "sigmoid",
        "erf" (exact GELU), "mul" (a product of two activations: SiLU, SE gates), ...),
        read off the jaxpr; affine steps (BN, bias, scaling) are not listed.
    """

    id: int
    size: int
    members: tuple[Member, ...]
    widths: tuple[str, ...] = ()
    prunable: bool = True
    reason: str = ""
    notes: tuple[str, ...] = ()
    kind: str = "channels"
    anchor: tuple = ()
    activations: tuple[str, ...] = ()

    @property
    def mask_exact(self) -> bool:
        """True when zeroing the removed channels is exactly equivalent to removing them."""
        return not self.notes

    def summary(self, limit: int = 4) -> str:
        by_module: dict[str, list[str]] = {}
        for m in self.members:
            mod = "/".join(m.path[:-1]) or "<root>"
            by_module.setdefault(mod, []).append(f"{m.path[-1]}:{m.axis}{m.index_map.describe()}")
        items = [f"{mod}{{{','.join(v)}}}" for mod, v in by_module.items()]
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return " ".join(items[:limit]) + more


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One multiply-accumulating op of the traced network (a convolution or a
    ``dot_general``) as a product of axis sizes: its MACs per example are
    ``const * prod(layout.size for layout in factors)``, counted as :mod:`hobs_jax.macs`
    counts them (output elements times the contracted size, padding taps included).

    ``factors`` are the layouts of the op's channel-bearing axes (output axes and
    contracted axes); every other axis (spatial, kernel window, batch) is folded into
    ``const``. Replacing each group's size by its kept count gives the op's cost after
    pruning, including concatenations (a sum of groups) and splits, which a product of
    powers cannot express (:func:`hobs_jax.allocation.build_cost_model`)."""

    path: str
    kind: str  # "conv" | "dot"
    const: int
    factors: tuple["Layout", ...]


@dataclasses.dataclass(frozen=True)
class Graph:
    """The channel groups of one model at one set of widths.

    Attributes:
      model: zoo name, or the module's class (``package.module.Class``) for another Flax
        module (None when traced as a bare function).
      input_shape: the traced input shape (NHWC for the zoo).
      groups: every channel group, in id order (prunable or not).
      axes: the layout of every variable axis that holds a group.
      ops: the convolutions and dot products with their sizes in group terms (costs).
      zoo: whether ``model`` is a zoo name (its groups then name width entries).
    """

    model: str | None
    input_shape: tuple[int, ...]
    groups: tuple[Group, ...]
    axes: tuple[VarAxis, ...]
    ops: tuple[OpCost, ...] = ()
    zoo: bool = False

    @property
    def fingerprint(self) -> str:
        """Hash of the model name and every group's size, prunability and (sorted) members."""
        desc = [self.model, [[g.id, g.size, g.prunable,
                              sorted([m.collection, m.name, m.axis, m.size] for m in g.members)]
                             for g in self.groups]]
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]

    @property
    def prunable(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    @property
    def activations(self) -> tuple[str, ...]:
        """Every nonlinearity applied to the network's channel groups (sorted): ``("relu",)``
        for a ReLU network (the fact UDFC's closed form needs)."""
        return tuple(sorted({a for g in self.groups for a in g.activations}))

    @property
    def channels(self) -> int:
        """Total channels over the prunable groups."""
        return sum(g.size for g in self.prunable)

    def group(self, gid: int) -> Group:
        if not isinstance(gid, (int, np.integer)) or not 0 <= gid < len(self.groups):
            raise ValueError(f"unknown group {gid!r}: the graph of {self.model or 'this model'} "
                             f"has groups 0..{len(self.groups) - 1}")
        return self.groups[int(gid)]

    def by_width(self, entry: str) -> Group:
        """The group sizing zoo width ``entry``."""
        for g in self.groups:
            if entry in g.widths:
                return g
        raise ValueError(f"no group sizes width entry {entry!r}")

    def axis(self, collection: str, path: tuple[str, ...], axis: int) -> VarAxis | None:
        for a in self.axes:
            if a.key == (collection, tuple(path), axis):
                return a
        return None

    def find_anchor(self, anchor: tuple) -> Group | None:
        """The group at ``anchor`` (see :attr:`Group.anchor`), or None."""
        col, path, axis, k = anchor
        va = self.axis(col, tuple(path), axis)
        gids = [] if va is None else layout_groups(va.layout)
        return self.groups[gids[k]] if k < len(gids) else None

    def dump(self) -> str:
        """One line per group: id, size, width entries, kind, members; then the count."""
        lines = [f"# {self.model or 'model'} input {tuple(self.input_shape)} fingerprint {self.fingerprint}"]
        for g in self.groups:
            widths = ",".join(g.widths) or "-"
            status = g.kind if g.prunable else f"NOT PRUNABLE ({g.reason})"
            note = f" [{len(g.notes)} note(s): {g.notes[0]}]" if g.notes else ""
            lines.append(f"{g.id:4d} size {g.size:5d} [{widths}] {status}{note}: {g.summary()}")
        lines.append(f"{len(self.prunable)} groups, {self.channels} channels")
        return "\n".join(lines)

    def with_groups(self, groups: Sequence[Group]) -> "Graph":
        """The same graph with ``groups`` replacing its groups (ids and members unchanged)."""
        return dataclasses.replace(self, groups=tuple(groups))


def members_by_group(axes: Iterable[VarAxis], sizes: Sequence[int]) -> list[tuple[Member, ...]]:
    """For every group id (``sizes[g]`` channels): the variable axes holding it, in
    ``axes`` order, with their index maps."""
    out: list[list[Member]] = [[] for _ in sizes]
    for va in axes:
        for gid in dict.fromkeys(layout_groups(va.layout)):
            if isinstance(va.layout, Atom):
                imap = IndexMap()
            else:
                imap = IndexMap.from_channels(layout_channels(va.layout, gid), sizes[gid])
            out[gid].append(Member(va.collection, va.path, va.axis, va.layout.size, imap))
    return [tuple(m) for m in out]
