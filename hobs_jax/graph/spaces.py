"""Channel spaces: a union-find over array axes, with product and sum decompositions.

Every axis of every array in a traced network gets a *space*: an index set
``{0, ..., n-1}``. Two spaces are united when a primitive identifies their indices one to
one (a conv's input feature axis and its kernel's input axis; the two operands of a
residual add). Some primitives relate an axis to *several* spaces:

* ``reshape`` merges axes: ``[B, H, W, C] -> [B, H*W*C]`` makes the flat axis the
  row-major **product** of the spaces ``(h, w, c)``; splitting an axis decomposes its
  space into a product the same way (ViT's ``[.., heads*dim] -> [.., heads, dim]``).
* ``concatenate``/``slice``/``pad`` make an axis the **sum** (disjoint union at
  offsets) of pieces.

A space may therefore carry one decomposition (``prod`` or ``sum`` of parts). Uniting two
decomposed spaces unites their parts pairwise, refining products (``[6, 4]`` against
``[2, 12]`` becomes ``[2, 3, 4]`` on both sides) or sums where the sizes allow; a product
met by a sum, or a product whose factor boundaries cannot be aligned, is *mixed*: every
space below both sides is tagged opaque, so no channel group through it is ever pruned.

The channel groups of the network are the classes of *atomic* spaces (no decomposition)
at the end of tracing. Size-1 axes get no space at all (they broadcast, and a
one-channel axis has nothing left to prune).

Tags record why a class may not be pruned or is not a channel axis at all:

* ``pinned``  - tied to the network input or output (input channels, logits);
* ``spatial`` - a feature-map / kernel-window / sequence axis, not a channel;
* ``opaque``  - touched by something the tracer cannot follow (unsupported primitive,
  mixing reshape, dynamic index); prunable never;
* ``note``    - prunable, but worth knowing (a reduction over the channel axis: the pruned
  network is then not exactly the masked original, e.g. LayerNorm statistics);
* ``role``    - descriptive: residual stream, attention heads, attention head dim;
* ``act``     - a nonlinearity applied to these channels ("relu", "clip", "sigmoid", ...).

Reference: the dependency-graph idea is DepGraph (Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023); this is an independent jaxpr-level formulation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

BLOCKING = ("pinned", "spatial", "opaque")


@dataclasses.dataclass(frozen=True)
class Tag:
    """One reason attached to a space: ``kind`` in pinned/spatial/opaque/note/role."""

    kind: str
    text: str


@dataclasses.dataclass(frozen=True)
class Decomp:
    """``kind`` "prod" (row-major product) or "sum" (concatenation) of ``parts``.

    ``parts`` hold space ids, or None for a size-1 piece (only sums keep those: they
    still occupy an offset)."""

    kind: str
    parts: tuple[int | None, ...]
    sizes: tuple[int, ...]


class SpaceTable:
    """Mutable union-find used only while tracing; the result is frozen into a Graph."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._decomp: dict[int, Decomp] = {}
        self._tags: dict[int, list[Tag]] = {}
        self._seen: dict[int, tuple] = {}

    # -- basic union-find -------------------------------------------------------------
    def new(self, size: int, tag: Tag | None = None) -> int | None:
        """A fresh space of ``size`` indices (None for size 1)."""
        if size == 1:
            return None
        if size < 1:
            raise ValueError(f"empty axis (size {size}) cannot be traced")
        i = len(self._parent)
        self._parent.append(i)
        self._size.append(size)
        if tag is not None:
            self._tags[i] = [tag]
        return i

    def find(self, a: int) -> int:
        root = a
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[a] != root:
            self._parent[a], a = root, self._parent[a]
        return root

    def size(self, a: int | None) -> int:
        return 1 if a is None else self._size[a]

    def decomp(self, a: int) -> Decomp | None:
        return self._decomp.get(self.find(a))

    def tag(self, a: int | None, kind: str, text: str) -> None:
        if a is None:
            return
        tags = self._tags.setdefault(self.find(a), [])
        t = Tag(kind, text)
        if t not in tags:
            tags.append(t)

    def tags(self, a: int) -> list[Tag]:
        return list(self._tags.get(self.find(a), ()))

    def mark_seen(self, a: int | None, order: tuple) -> None:
        """Record that an equation output axis carries space ``a`` (first producer order)."""
        if a is None:
            return
        r = self.find(a)
        if r not in self._seen or order < self._seen[r]:
            self._seen[r] = order

    def union(self, a: int | None, b: int | None, where: str) -> None:
        """Identify index i of ``a`` with index i of ``b`` (same size)."""
        if a is None or b is None:
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise AssertionError(f"internal: uniting spaces of sizes {self._size[ra]} and "
                                 f"{self._size[rb]} at {where}")
        da, db = self._decomp.pop(ra, None), self._decomp.get(rb)
        self._parent[ra] = rb
        for t in self._tags.pop(ra, ()):
            self.tag(rb, t.kind, t.text)
        if ra in self._seen:
            self.mark_seen(rb, self._seen.pop(ra))
        if da is None:
            return
        if db is None:
            self._decomp[rb] = da
            return
        self._unify(da, db, where)

    # -- decompositions ---------------------------------------------------------------
    def decompose(self, a: int, kind: str, sizes: Sequence[int], where: str) -> tuple[int | None, ...]:
        """Decompose ``a`` as a ``kind`` ("prod" or "sum") of parts of ``sizes``; returns
        part spaces (refining or, if impossible, mixing with an existing decomposition)."""
        parts = tuple(self.new(s) for s in sizes)
        if kind == "prod":
            keep = tuple((p, s) for p, s in zip(parts, sizes) if s != 1)
            if len(keep) == 1:  # a product with one non-unit factor is that factor
                self.union(a, keep[0][0], where)
                return parts
            comp = self.new(self.size(a))
            self._decomp[comp] = Decomp("prod", tuple(p for p, _ in keep), tuple(s for _, s in keep))
        else:
            comp = self.new(self.size(a))
            self._decomp[comp] = Decomp("sum", parts, tuple(sizes))
        self.union(a, comp, where)
        return parts

    def composite(self, kind: str, parts: Sequence[int | None], where: str) -> int | None:
        """A new space that is the ``kind`` of ``parts`` (used for merged/concatenated axes)."""
        sizes = tuple(self.size(p) for p in parts)
        if kind == "prod":
            pairs = [(p, s) for p, s in zip(parts, sizes) if p is not None]
            if not pairs:
                return None
            if len(pairs) == 1:
                return pairs[0][0]
            total = 1
            for _, s in pairs:
                total *= s
            comp = self.new(total)
            self._decomp[comp] = Decomp("prod", tuple(p for p, _ in pairs), tuple(s for _, s in pairs))
            return comp
        total = sum(sizes)
        if total == 1:
            return None
        if len(parts) == 1:
            return parts[0]
        comp = self.new(total)
        self._decomp[comp] = Decomp("sum", tuple(parts), sizes)
        return comp

    def prod_leaves(self, a: int | None) -> list[int]:
        """The row-major factor spaces of ``a`` (nested products flattened)."""
        if a is None:
            return []
        d = self.decomp(a)
        if d is None or d.kind != "prod":
            return [self.find(a)]
        out: list[int] = []
        for p in d.parts:
            out.extend(self.prod_leaves(p))
        return out

    def atoms_below(self, a: int | None) -> list[int]:
        if a is None:
            return []
        d = self.decomp(a)
        if d is None:
            return [self.find(a)]
        out: list[int] = []
        for p in d.parts:
            out.extend(self.atoms_below(p))
        return out

    def mix(self, spaces: Sequence[int | None], text: str) -> None:
        """Tag every space below ``spaces`` opaque: their indices are entangled."""
        for s in spaces:
            self.tag(s, "opaque", text)
            for atom in self.atoms_below(s):
                self.tag(atom, "opaque", text)

    def _unify(self, da: Decomp, db: Decomp, where: str) -> None:
        if da.kind == db.kind and da.sizes == db.sizes:
            for p, q in zip(da.parts, db.parts):
                self.union(p, q, where)
            return
        if da.kind != db.kind:
            self.mix(list(da.parts) + list(db.parts), f"{where} mixes a concatenated axis with a reshaped one")
            return
        if da.kind == "prod":
            left = [x for p in da.parts for x in self.prod_leaves(p)]
            right = [x for p in db.parts for x in self.prod_leaves(p)]
            self._align(left, right, "prod", where)
        else:
            self._align(list(da.parts), list(db.parts), "sum", where)

    def _align(self, left: list, right: list, kind: str, where: str) -> None:
        """Unite two part lists of equal total size, splitting parts where boundaries
        differ (a product needs divisibility, a sum any smaller piece)."""
        left, right = list(left), list(right)
        while left and right:
            a, b = left.pop(0), right.pop(0)
            sa, sb = self.size(a), self.size(b)
            if sa == sb:
                self.union(a, b, where)
                continue
            small, big, big_list = (a, b, right) if sa < sb else (b, a, left)
            ss, sbig = self.size(small), self.size(big)
            if kind == "prod" and sbig % ss:
                self.mix([a, b] + left + right, f"{where} reshapes across axis boundaries ({ss} vs {sbig})")
                return
            if big is None:
                self.mix([a, b] + left + right, f"{where} splits a unit piece")
                return
            rest = sbig // ss if kind == "prod" else sbig - ss
            head, tail = self.decompose(big, kind, (ss, rest), where)
            self.union(small, head, where)
            big_list.insert(0, tail)
        if left or right:
            self.mix(left + right, f"{where} leaves parts unmatched")

    # -- finalization -----------------------------------------------------------------
    def finalize(self) -> None:
        """Push blocking tags and first-producer order from composite spaces down to
        their parts (largest first, so a part always hears from every whole above it)."""
        roots = {self.find(i) for i in range(len(self._parent))}
        composites = sorted((r for r in roots if r in self._decomp), key=lambda r: (-self._size[r], r))
        for r in composites:
            d = self._decomp[r]
            for i, p in enumerate(d.parts):
                if p is None:
                    continue
                for t in self._tags.get(r, ()):
                    if t.kind in BLOCKING or t.kind == "act":
                        self.tag(p, t.kind, t.text)
                if r in self._seen:
                    self.mark_seen(p, self._seen[r] + (i,))

    def seen(self, a: int) -> tuple | None:
        return self._seen.get(self.find(a))
