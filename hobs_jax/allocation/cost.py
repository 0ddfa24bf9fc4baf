"""Exact, fast MACs/params of a network as a function of kept channels per group.

Every counted layer's MACs (and every parameter leaf's size) is a monomial in the group
sizes: ``c * prod_g k_g ** p_g`` (a conv is positions x C_in/groups x C_out x taps; a
depthwise conv depends on its one group; ViT's attention products on heads x head dim).
:func:`build_cost_model` finds every monomial with one shape evaluation: it sets each
prunable group to a distinct prime above every spatial, kernel and class size, counts
the model at those widths, and factors each layer's count over the primes (the probe
that :func:`hobs_jax.models.width_axes` uses for axes). The result is checked against
the unpruned counts exactly; a layer whose count is not a monomial (a channel axis that
concatenates two groups) raises. Evaluating the model is then a few numpy products, so
allocation searches and R-SPAR episodes cost microseconds, not a re-trace.

Outside the zoo a layer's count need not be a monomial: a conv reading a concatenation
(DenseNet's growth) costs ``c * (k_a + k_b) * k_out``. There the model comes from the
graph itself: each counted op (:class:`~hobs_jax.graph.groups.OpCost`) is a constant
times the sizes of its channel axes, each a sum or product of group sizes, expanded
into monomials (one row per monomial); parameters likewise from the variable axes'
layouts. It is checked twice: at the network's own widths against
:func:`hobs_jax.macs.count`, and, through the network's rebuild (the same probe as the
zoo's), at distinct prime widths against ``macs.count`` of the rebuilt network.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction
from typing import Mapping

import jax
import numpy as np

from hobs_jax import macs, models
from hobs_jax.models.registry import primes_from


@dataclasses.dataclass(frozen=True)
class CostModel:
    """MACs per example and parameter count as functions of kept channels.

    Attributes:
      model: zoo name (or the module's class for a network outside the zoo).
      group_ids: the prunable groups, in graph order; ``keep`` vectors follow it.
      sizes: [G] full group sizes.
      macs_coef, macs_exp: per counted layer, MACs = coef * prod(keep ** exp) ([L], [L, G]).
      params_coef, params_exp: the same per parameter leaf.
    """

    model: str
    group_ids: tuple[int, ...]
    sizes: np.ndarray
    macs_coef: np.ndarray
    macs_exp: np.ndarray
    params_coef: np.ndarray
    params_exp: np.ndarray

    def _eval(self, coef, exp, keep) -> float:
        k = np.asarray(keep, dtype=np.float64)
        return float(np.sum(coef * np.prod(np.power(k[None, :], exp), axis=1)))

    def macs(self, keep) -> float:
        return self._eval(self.macs_coef, self.macs_exp, keep)

    def params(self, keep) -> float:
        return self._eval(self.params_coef, self.params_exp, keep)

    @property
    def full(self) -> np.ndarray:
        return self.sizes.astype(np.float64)

    def ratio(self, keep, metric: str = "macs") -> float:
        """Kept fraction of ``metric`` ('macs' or 'params')."""
        f = self.macs if metric == "macs" else self.params
        return f(keep) / f(self.full)

    def keep_vector(self, keep: Mapping[int, int]) -> np.ndarray:
        """[G] from a group id -> kept count mapping (missing groups keep everything)."""
        return np.array([keep.get(g, s) for g, s in zip(self.group_ids, self.sizes)], np.float64)


def _count(name, widths, num_classes, in_channels, shape):
    """(per-layer MACs, per-leaf parameter counts) of zoo model ``name`` at ``widths``."""
    return _count_cached(name, tuple(sorted(dict(widths).items())), num_classes, in_channels, tuple(shape))


@functools.lru_cache(maxsize=32)
def _count_cached(name, widths: tuple, num_classes, in_channels, shape):
    # Memoized: the cost model of one architecture is rebuilt by every pruning call.
    model = models.build(name, widths=dict(widths), num_classes=num_classes, in_channels=in_channels)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
    rep = macs.count(model, variables, shape)
    leaves = [int(np.prod(x.shape)) for x in jax.tree.leaves(variables.get("params", variables))]
    return tuple(l.macs for l in rep.layers), tuple(leaves)


def _factor(value: int, primes: list[int]) -> tuple[int, list[int]]:
    exps = []
    for p in primes:
        e = 0
        while value % p == 0:
            value //= p
            e += 1
        exps.append(e)
    return value, exps


def build_cost_model(model, graph=None, widths: Mapping[str, int] | None = None,
                     input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                     in_channels: int | None = None) -> CostModel:
    """The :class:`CostModel` of a network over the prunable groups of ``graph``, for one
    example.

    ``model``: a :class:`~hobs_jax.models.Prunable` (or anything
    ``hobs_jax.graph.as_prunable`` takes), or, as before, a zoo name with its ``widths``,
    ``input_shape`` [1, H, W, C], ``num_classes`` and ``in_channels``.
    """
    if isinstance(model, str) and widths is not None:
        return _zoo_cost_model(model, graph, widths, input_shape, num_classes, in_channels)
    from hobs_jax.graph import as_prunable, graph_of

    p = as_prunable(model, None, input_shape)
    graph = graph_of(p) if graph is None else graph
    if p.kind == "zoo":
        w, nc, ic = models.infer_widths(p.name, p.variables)
        return _zoo_cost_model(p.name, graph, w, p.input_shape, nc, ic)
    return _graph_cost_model(p, graph)


def _zoo_cost_model(name: str, graph, widths: Mapping[str, int], input_shape: tuple[int, ...],
                    num_classes: int, in_channels: int) -> CostModel:
    """The :class:`CostModel` of zoo model ``name`` at ``widths`` (its prunable groups from
    ``graph``) by the prime probe (module docstring)."""
    groups = [g for g in graph.prunable if g.widths]
    if len(groups) != len(graph.prunable):
        missing = [g.id for g in graph.prunable if not g.widths][:3]
        raise ValueError(f"{name}: prunable groups {missing} size no width entry; cannot model costs")
    primes = primes_from(211, len(groups))
    probe = dict(widths)
    for g, p in zip(groups, primes):
        for entry in g.widths:
            probe[entry] = p
    shape = (1,) + tuple(input_shape[1:])
    base_macs, base_params = _count(name, dict(widths), num_classes, in_channels, shape)
    probe_macs, probe_params = _count(name, probe, num_classes, in_channels, shape)
    sizes = [g.size for g in groups]

    def solve(base, probed, what):
        if len(base) != len(probed):
            raise ValueError(f"{name}: {what} structure changes with widths; cannot model costs")
        coef, exps = [], []
        for i, (b, q) in enumerate(zip(base, probed)):
            rest, e = _factor(q, primes)
            # c = q / prod(p^e) must also equal b / prod(s^e): the count is a monomial.
            denom = 1
            for s, k in zip(sizes, e):
                denom *= s ** k
            if Fraction(b, denom) != rest:
                raise ValueError(f"{name}: {what} #{i} is not a monomial in the group sizes "
                                 f"(a channel axis mixing groups?); cannot model costs")
            coef.append(float(rest))
            exps.append(e)
        return np.array(coef), np.array(exps, dtype=np.float64).reshape(len(base), len(groups))

    mc, me = solve(base_macs, probe_macs, "layer")
    pc, pe = solve(base_params, probe_params, "parameter")
    return CostModel(name, tuple(g.id for g in groups), np.array(sizes), mc, me, pc, pe)


# -- outside the zoo: polynomials read off the graph -------------------------------

Poly = dict  # {exponent tuple over the cost model's groups: coefficient}


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ea, ca in a.items():
        for eb, cb in b.items():
            e = tuple(x + y for x, y in zip(ea, eb))
            out[e] = out.get(e, 0) + ca * cb
    return out


def _layout_poly(node, index: Mapping[int, int], n: int) -> Poly:
    """The size of ``node`` as a polynomial in the kept counts of the groups ``index``
    maps to positions (other groups at their size)."""
    from hobs_jax.graph import Atom

    zero = (0,) * n
    if isinstance(node, Atom):
        if node.group in index:
            e = [0] * n
            e[index[node.group]] = 1
            return {tuple(e): 1}
        return {zero: int(node.size)}
    parts = [_layout_poly(q, index, n) for q in node.parts]
    if node.kind == "prod":
        out = {zero: 1}
        for q in parts:
            out = _poly_mul(out, q)
        return out
    out: Poly = {}
    for q in parts:
        for e, c in q.items():
            out[e] = out.get(e, 0) + c
    return out


def _rows(polys: list[Poly], n: int) -> tuple[np.ndarray, np.ndarray]:
    coef, exps = [], []
    for poly in polys:
        for e, c in sorted(poly.items()):
            if c:
                coef.append(float(c))
                exps.append(e)
    return np.array(coef, np.float64), np.array(exps, np.float64).reshape(len(coef), n)


def _graph_cost_model(p, graph) -> CostModel:
    from hobs_jax.graph.prunable import resized_shapes

    groups = list(graph.prunable)
    index = {g.id: i for i, g in enumerate(groups)}
    n = len(groups)
    batch = int(graph.input_shape[0])
    macs_polys = []
    for op in graph.ops:
        poly = {(0,) * n: op.const}
        for f in op.factors:
            poly = _poly_mul(poly, _layout_poly(f, index, n))
        macs_polys.append({e: c // batch if c % batch == 0 else c / batch for e, c in poly.items()})
    by_leaf: dict[tuple, dict[int, object]] = {}
    for va in graph.axes:
        by_leaf.setdefault((va.collection,) + va.path, {})[va.axis] = va.layout
    params_polys = []
    leaves = jax.tree_util.tree_flatten_with_path(p.variables.get("params", p.variables))[0]
    for path, leaf in leaves:
        key = ("params",) + tuple(str(getattr(k, "key", k)) for k in path)
        poly = {(0,) * n: 1}
        for axis, size in enumerate(np.shape(leaf)):
            layout = by_leaf.get(key, {}).get(axis)
            poly = _poly_mul(poly, _layout_poly(layout, index, n) if layout is not None else {(0,) * n: int(size)})
        params_polys.append(poly)
    mc, me = _rows(macs_polys, n)
    pc, pe = _rows(params_polys, n)
    cm = CostModel(p.label, tuple(g.id for g in groups), np.array([g.size for g in groups]), mc, me, pc, pe)
    # Check 1: the network's own count.
    rep = macs.count(p.module, p.variables, p.input_shape)
    full = cm.full
    if round(cm.macs(full)) != rep.macs or round(cm.params(full)) != rep.params:
        raise ValueError(f"{p.label}: the graph's cost model gives {cm.macs(full):.0f} MACs / {cm.params(full):.0f} "
                         f"params, macs.count {rep.macs} / {rep.params} (an op the graph does not follow?)")
    # Check 2: the rebuilt network at distinct prime widths (the zoo's probe).
    if groups:
        primes = primes_from(211, n)
        shapes = resized_shapes(graph, p.variables, dict(zip(cm.group_ids, primes)))
        q = p.rebuild(shapes)
        probe = macs.count(q.module, shapes, p.input_shape)
        k = np.asarray(primes, np.float64)
        if round(cm.macs(k)) != probe.macs or round(cm.params(k)) != probe.params:
            raise ValueError(f"{p.label}: the cost model predicts {cm.macs(k):.0f} MACs / {cm.params(k):.0f} params "
                             f"at the probe widths, the rebuilt network has {probe.macs} / {probe.params}")
    return cm
