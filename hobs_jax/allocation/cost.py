"""Exact, fast MACs/params of a zoo model as a function of kept channels per group.

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
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction
from typing import Mapping

import jax
import numpy as np

from hobs_jax import macs, models
from hobs_jax.models.registry import _primes_from


@dataclasses.dataclass(frozen=True)
class CostModel:
    """MACs per example and parameter count as functions of kept channels.

    Attributes:
      model: zoo name.
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


def build_cost_model(name: str, graph, widths: Mapping[str, int], input_shape: tuple[int, ...],
                     num_classes: int, in_channels: int) -> CostModel:
    """The :class:`CostModel` of zoo model ``name`` at ``widths`` (its prunable groups from
    ``graph``), for one example of ``input_shape`` [1, H, W, C]."""
    groups = [g for g in graph.prunable if g.widths]
    if len(groups) != len(graph.prunable):
        missing = [g.id for g in graph.prunable if not g.widths][:3]
        raise ValueError(f"{name}: prunable groups {missing} size no width entry; cannot model costs")
    primes = _primes_from(211, len(groups))
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
