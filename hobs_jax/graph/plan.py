"""Pruning plans: which channels of which group survive.

A :class:`PrunePlan` maps group ids of one :class:`~hobs_jax.graph.groups.Graph` to the
sorted channel indices each group keeps (groups it does not name keep everything). It
names the model and the graph fingerprint, so a plan made for another model or other
widths is refused, and it round-trips through JSON.

``round_to=k`` asks that every pruned group keep a multiple of k channels (for hardware
tiles); a group may also keep all its channels (a group smaller than k, or one whose
size is not a multiple of k, is then kept whole). The builders round keep counts **up**
to the next multiple of k (never below what was asked, never above the group size).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from hobs_jax.graph.groups import Graph, Group

_VERSION = 1


def _check_indices(gid, idx) -> tuple[int, ...]:
    if isinstance(idx, (str, bytes)) or not isinstance(idx, Iterable):
        raise ValueError(f"group {gid}: kept channels must be a sequence of ints, got {idx!r}")
    out = []
    for i in idx:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"group {gid}: channel index {i!r} is not an int")
        out.append(int(i))
    if not out:
        raise ValueError(f"group {gid}: keeping zero channels would disconnect the network")
    for a, b in zip(out, out[1:]):
        if a == b:
            raise ValueError(f"group {gid}: duplicate channel index {a}")
        if b < a:
            raise ValueError(f"group {gid}: channel indices are not sorted ({a} before {b})")
    if out[0] < 0:
        raise ValueError(f"group {gid}: negative channel index {out[0]}")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    """Kept channels per group of one graph.

    Attributes:
      model: zoo name (or None for a non-zoo module) the plan was made for.
      fingerprint: :attr:`Graph.fingerprint` of that model at its widths.
      keep: ``((group id, (sorted kept channel indices...)), ...)`` sorted by group id;
        a mapping is accepted and normalized.
      round_to: if set, each pruned group keeps a multiple of this many channels.
    """

    model: str | None
    fingerprint: str
    keep: tuple[tuple[int, tuple[int, ...]], ...] = ()
    round_to: int | None = None

    def __post_init__(self):
        items = self.keep.items() if isinstance(self.keep, Mapping) else self.keep
        norm = {}
        for gid, idx in items:
            if isinstance(gid, (bool, np.bool_)) or not isinstance(gid, (int, np.integer)) or gid < 0:
                raise ValueError(f"group id must be a non-negative int, got {gid!r}")
            if int(gid) in norm:
                raise ValueError(f"group {gid} appears twice in the plan")
            norm[int(gid)] = _check_indices(gid, idx)
        object.__setattr__(self, "keep", tuple(sorted(norm.items())))
        rt = self.round_to
        if rt is not None and (isinstance(rt, bool) or not isinstance(rt, (int, np.integer)) or rt < 1):
            raise ValueError(f"round_to must be a positive int or None, got {rt!r}")
        if rt is not None:
            object.__setattr__(self, "round_to", int(rt))

    def kept(self, gid: int) -> tuple[int, ...] | None:
        """Channels group ``gid`` keeps, or None when the plan leaves it whole."""
        return dict(self.keep).get(gid)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.keep)

    def removes_any(self, graph: Graph) -> bool:
        return any(len(idx) < graph.group(g).size for g, idx in self.keep)

    def to_json(self) -> str:
        return json.dumps({"version": _VERSION, "model": self.model, "fingerprint": self.fingerprint,
                           "round_to": self.round_to,
                           "keep": {str(g): list(idx) for g, idx in self.keep}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"plan JSON is malformed: {e}") from None
        if not isinstance(d, dict) or d.get("version") != _VERSION:
            found = d.get("version") if isinstance(d, dict) else None
            raise ValueError(f"not a version-{_VERSION} PrunePlan JSON (version {found!r})")
        missing = {"model", "fingerprint", "keep"} - set(d)
        if missing:
            raise ValueError(f"plan JSON lacks {sorted(missing)}")
        try:
            keep = {int(g): idx for g, idx in d["keep"].items()}
        except (ValueError, AttributeError):
            raise ValueError("plan JSON 'keep' must map group ids to index lists") from None
        return cls(d["model"], d["fingerprint"], tuple(keep.items()), d.get("round_to"))


def _where(g: Group) -> str:
    m = g.members[0]
    return f"{m.collection}/{m.name} axis {m.axis}"


def validate(plan: PrunePlan, graph: Graph) -> None:
    """One-line ``ValueError`` unless ``plan`` can be applied to ``graph``."""
    if plan.model != graph.model:
        raise ValueError(f"plan is for model {plan.model!r}, not {graph.model!r}")
    if plan.fingerprint != graph.fingerprint:
        raise ValueError(f"plan was made for graph {plan.fingerprint} but {graph.model or 'this model'} "
                         f"at these widths has graph {graph.fingerprint} (another model or other widths)")
    for gid, idx in plan.keep:
        g = graph.group(gid)
        if idx[-1] >= g.size:
            raise ValueError(f"group {gid} ({_where(g)}) has {g.size} channels; plan keeps index {idx[-1]}")
        if len(idx) < g.size and not g.prunable:
            raise ValueError(f"group {gid} ({_where(g)}) is not prunable: {g.reason}")
        k = plan.round_to
        if k and len(idx) < g.size and len(idx) % k:
            raise ValueError(f"group {gid} ({_where(g)}) keeps {len(idx)} of {g.size} channels, "
                             f"not a multiple of round_to={k}")


def round_keep(n: int, size: int, round_to: int | None) -> int:
    """``n`` rounded up to a multiple of ``round_to``, capped at ``size``; at least 1."""
    n = max(1, min(int(n), size))
    if round_to:
        n = min(size, math.ceil(n / round_to) * round_to)
    return n


def empty_plan(graph: Graph) -> PrunePlan:
    """The plan that keeps everything."""
    return PrunePlan(graph.model, graph.fingerprint)


def make_plan(graph: Graph, keep: Mapping[int, Sequence[int]], round_to: int | None = None) -> PrunePlan:
    """A validated plan from explicit kept indices (sorted, no duplicates)."""
    plan = PrunePlan(graph.model, graph.fingerprint, tuple((g, tuple(idx)) for g, idx in keep.items()), round_to)
    validate(plan, graph)
    return plan


def plan_from_scores(graph: Graph, scores: Mapping[int, np.ndarray],
                     keep: Mapping[int, int] | float, *, round_to: int | None = None) -> PrunePlan:
    """Keep the top-k channels by score in each group.

    Args:
      scores: group id -> [size] scores (higher survives; ties keep the lower index).
      keep: group id -> channels to keep, or a float ratio applied to every prunable
        group that has scores (``round(ratio * size)``, at least 1).
      round_to: keep counts rounded up to multiples of this (see module docstring).
    """
    out = {}
    for g in graph.prunable:
        if g.id not in scores:
            continue
        s = np.asarray(scores[g.id], dtype=np.float64)
        if s.shape != (g.size,):
            raise ValueError(f"group {g.id}: scores have shape {s.shape}, expected ({g.size},)")
        if isinstance(keep, Mapping):
            if g.id not in keep:
                continue
            n = keep[g.id]
        else:
            n = int(round(float(keep) * g.size))
        n = round_keep(n, g.size, round_to)
        if n < g.size:
            order = np.argsort(-s, kind="stable")[:n]
            out[g.id] = tuple(int(i) for i in np.sort(order))
    return make_plan(graph, out, round_to)


def random_plan(graph: Graph, seed: int, *, select: Callable[[Group], bool] | None = None,
                min_ratio: float = 0.25, max_ratio: float = 0.9, round_to: int | None = None) -> PrunePlan:
    """A random plan (for tests): each selected prunable group keeps a random subset of
    ``ceil(min_ratio * size)`` to ``ceil(max_ratio * size)`` channels."""
    rng = np.random.default_rng(seed)
    out = {}
    for g in graph.prunable:
        if select is not None and not select(g):
            continue
        lo = max(1, math.ceil(min_ratio * g.size))
        hi = max(lo, math.ceil(max_ratio * g.size))
        n = round_keep(int(rng.integers(lo, hi + 1)), g.size, round_to)
        if n < g.size:
            out[g.id] = tuple(int(i) for i in np.sort(rng.choice(g.size, n, replace=False)))
    return make_plan(graph, out, round_to)


def compose(first: PrunePlan, second: PrunePlan, graph: Graph, pruned_graph: Graph) -> PrunePlan:
    """One plan on ``graph`` equal to applying ``first`` and then ``second``.

    ``second`` is a plan on ``pruned_graph``, the graph of the model ``first`` produced,
    indexed in that model's channel numbering; groups are matched through their anchors
    (the same variable axis in both models). The composed plan has no ``round_to``.
    """
    validate(first, graph)
    validate(second, pruned_graph)
    out, covered = {}, set()
    for g in graph.groups:
        base = np.asarray(first.kept(g.id) if first.kept(g.id) is not None else range(g.size))
        pg = pruned_graph.find_anchor(g.anchor)
        if pg is not None:
            if pg.size != len(base):
                raise ValueError(f"group {g.id}: pruned graph group {pg.id} has {pg.size} channels, "
                                 f"first plan keeps {len(base)}")
            covered.add(pg.id)
            sec = second.kept(pg.id)
            if sec is not None:
                base = base[np.asarray(sec)]
        if len(base) < g.size:
            out[g.id] = tuple(int(i) for i in base)
    stray = [gid for gid in second.groups if gid not in covered]
    if stray:
        raise ValueError(f"second plan prunes group {stray[0]} of the pruned graph, which matches no "
                         f"group of the original graph")
    return make_plan(graph, out)
