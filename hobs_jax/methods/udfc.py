"""``udfc``: data-free compensation of pruned channels, closed form, no data, no fine-tuning.

Bai et al., "Unified Data-Free Compression: Pruning and Quantization without
Fine-Tuning", ICCV 2023 (UDFC), pruning part.

**Setting.** A compensable group is a producer conv ``W`` ([kh, kw, C_in, C], HWIO)
followed by BatchNorm (gamma, beta, running mean mu, running var v, eps) and ReLU, read
by one or more consumers ``V`` (conv kernels [kh', kw', C, C_out] or dense kernels
[C, C_out], channel axis = input axis). Channel c's activation is

    y_c = a_c * (w_c . x - mu_c) + beta_c,   a_c = gamma_c / sqrt(v_c + eps),   h_c = relu(y_c)

and a consumer computes ``z = sum_c V[:, c] (*) h_c``.

**Assumption and reconstruction form (UDFC Sec. 3).** The information of a pruned
channel p is partly preserved by a linear combination of the kept channels K,
``h_p ~= sum_{j in K} s_{pj} h_j``. Substituting into z, the consumer keeps its output
by absorbing the pruned input channel into the kept ones:

    V[:, j] <- V[:, j] + sum_{p in P} s_{pj} V[:, p]        (j in K)

which leaves the error ``sum_p V[:, p] (*) (h_p - sum_j s_{pj} h_j)``; for each p the
scales minimize the expected squared reconstruction error of the damaged channel,

    l_p(s) = E[(h_p - s^T h_K)^2] + lambda * s^T s
           = M_pp - 2 s^T M_Kp + s^T (M_KK + lambda I) s,   M_ij = E[h_i h_j],

a convex quadratic whose minimizer is the closed form ``s_p = (M_KK + lambda I)^-1 M_Kp``
(all p at once: one [|K|, |K|] solve per group). The consumer-side factor ``||V[:, p]||^2``
of the error is common to every s_p and does not change the minimizer.

**Where BN statistics enter (data-free second moments).** No data is used: M comes
from a Gaussian model of the pre-activations fixed by the BN layer itself. Under the
running statistics the conv output has mean mu_c and variance v_c, so

    E[y_c] = beta_c,   Std[y_c] = |gamma_c| * sqrt(v_c / (v_c + eps)),

and the correlation of two channels is taken from their filters (the data-free proxy of
Neuron Merging, Kim et al., NeurIPS 2020: for inputs with i.i.d. entries,
corr(w_i . x, w_j . x) = cos(w_i, w_j)), with the sign of a_i a_j. With y jointly
Gaussian, ``M_ij = E[relu(y_i) relu(y_j)]`` has a closed form (moments of a truncated
bivariate normal; Rosenbaum, J. R. Stat. Soc. B 1961):

    with h_i = -m_i / s_i, r = sqrt(1 - rho^2), Q = 1 - Phi, P = Phi_2(-h_i, -h_j; rho):
    E[Z_i 1] = phi(h_i) Q((h_j - rho h_i) / r) + rho phi(h_j) Q((h_i - rho h_j) / r)
    E[Z_i Z_j 1] = rho P + rho h_i phi(h_i) Q((h_j - rho h_i)/r) + rho h_j phi(h_j) Q((h_i - rho h_j)/r)
                   + r / sqrt(2 pi) * phi(sqrt(h_i^2 - 2 rho h_i h_j + h_j^2) / r)
    M_ij = m_i m_j P + m_i s_j E[Z_j 1] + m_j s_i E[Z_i 1] + s_i s_j E[Z_i Z_j 1]
    M_ii = (m_i^2 + s_i^2) Phi(m_i / s_i) + m_i s_i phi(m_i / s_i)

(Phi_2 through Owen's T function). ``lambda = ridge * mean(diag M_KK)``.

**What this module takes from the paper and what it derives.** UDFC's assumption, the
reconstruction form (folding into the next layer's input channels) and the closed-form
minimization of the reconstruction error are the paper's. Its exact error expression
(Eqs. 11-18, hyper-parameters alpha_1, alpha_2) could not be consulted offline (only
the abstract and secondary summaries were reachable); the expectation above, evaluated
exactly under the BN-derived Gaussian model, is this module's derivation of that error. Quantization (the paper's
other half) is not implemented.

**Scope and selection.** Only groups with exactly one BN'd producer conv and ReLU are
compensable: the inner widths of ResNet blocks (the setting of Neuron Merging's ResNet
experiments, which prune only the first conv of each block); residual streams have many
producers and a ReLU after the sum, outside the reconstruction form;
``scope='compensable'`` (default) prunes only those, ``scope='all'`` also prunes the
other groups (residual streams) by group norm without compensation. Channels are chosen
by group L2 norm (``hobs_jax.graph.group_l2_scores``), allocation uniform or global.
Networks whose activation is not ReLU (MobileNet's ReLU6, EfficientNet's SiLU) are
refused: the ReLU moments above would be wrong there.

**As parts.** The method is the composition ``l2`` scorer -> uniform/global allocator ->
``udfc`` compensator; the compensator restricts the groups the allocator may prune to
the compensable ones (``scope='compensable'``) through :meth:`Compensator.groups`.
"""

from __future__ import annotations

import dataclasses

from typing import Literal

import jax
import numpy as np
from scipy.special import ndtr, owens_t

from hobs_jax.allocation import CostModel
from hobs_jax.allocation import restrict as _restrict
from hobs_jax.graph import Graph
from hobs_jax.methods.base import PruneTask
from hobs_jax.methods.parts import Selection
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.options import Options

BN_EPS = 1e-5  # the zoo's BatchNorm epsilon (hobs_jax.models.layers.batch_norm)


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def bivariate_cdf(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(Z1 <= h, Z2 <= k) for standard normals with correlation rho (|rho| < 1), via
    Owen's T (Owen, Ann. Math. Stat. 1956); arrays broadcast."""
    r = np.sqrt(1 - rho ** 2)
    h = np.where(np.abs(h) < 1e-12, np.where(h < 0, -1e-12, 1e-12), h)
    k = np.where(np.abs(k) < 1e-12, np.where(k < 0, -1e-12, 1e-12), k)
    delta = np.where(h * k > 0, 0.0, 0.5)
    return (0.5 * (ndtr(h) + ndtr(k)) - owens_t(h, (k - rho * h) / (h * r))
            - owens_t(k, (h - rho * k) / (k * r)) - delta)


def relu_gram(mean: np.ndarray, std: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """[C, C] ``E[relu(y_i) relu(y_j)]`` for y ~ N(mean, diag(std) corr diag(std)).

    Args: mean, std [C] (std > 0), corr [C, C] symmetric with unit diagonal.
    """
    m = np.asarray(mean, np.float64)
    s = np.maximum(np.asarray(std, np.float64), 1e-12)
    rho = np.clip(np.asarray(corr, np.float64), -1 + 1e-7, 1 - 1e-7)
    h = -m / s
    hi, hj = h[:, None], h[None, :]
    r = np.sqrt(1 - rho ** 2)
    q_ij = ndtr(-(hj - rho * hi) / r)  # Q((h_j - rho h_i) / r)
    q_ji = ndtr(-(hi - rho * hj) / r)
    p = bivariate_cdf(-hi, -hj, rho)
    ez_i = _phi(hi) * q_ij + rho * _phi(hj) * q_ji
    ez_j = _phi(hj) * q_ji + rho * _phi(hi) * q_ij
    quad = np.maximum(hi * hi - 2 * rho * hi * hj + hj * hj, 0.0)
    ezz = (rho * p + rho * hi * _phi(hi) * q_ij + rho * hj * _phi(hj) * q_ji
           + r / np.sqrt(2 * np.pi) * _phi(np.sqrt(quad) / r))
    mi, mj, si, sj = m[:, None], m[None, :], s[:, None], s[None, :]
    out = mi * mj * p + mi * sj * ez_j + mj * si * ez_i + si * sj * ezz
    a = m / s
    np.fill_diagonal(out, (m * m + s * s) * ndtr(a) + m * s * _phi(a))
    return (out + out.T) / 2


@dataclasses.dataclass(frozen=True)
class Chain:
    """A compensable group: producer kernel path, BN module path, consumer (path, axis)."""

    group: int
    producer: tuple[str, ...]
    bn: tuple[str, ...]
    consumers: tuple[tuple[tuple[str, ...], int], ...]


def find_chains(graph: Graph, params) -> dict[int, Chain]:
    """The prunable groups UDFC can compensate (see the module doc), by group id;
    ``params`` gives the kernels' ranks (the output channel axis is the last one)."""
    out = {}
    for g in graph.prunable:
        if not all(m.index_map.contiguous and m.size == g.size for m in g.members):
            continue
        members = [m for m in g.members if m.collection == "params"]
        kernels = [m for m in members if m.path[-1] == "kernel"]
        is_out = [m.axis == np.ndim(_get(params, m.path)) - 1 for m in kernels]
        producers = [m for m, o in zip(kernels, is_out) if o]
        consumers = [m for m, o in zip(kernels, is_out) if not o]
        norms = {m.path[:-1] for m in members if m.path[-1] in ("scale", "bias")}
        stats = {m.path[:-1] for m in g.members if m.collection == "batch_stats"}
        if (len(producers) != 1 or not consumers or len(norms) != 1 or stats != norms
                or any(m.path[-1] not in ("kernel", "scale", "bias") for m in members)):
            continue
        out[g.id] = Chain(g.id, producers[0].path, next(iter(norms)),
                          tuple((m.path, m.axis) for m in consumers))
    return out


def compensation(variables: dict, chain: Chain, kept: np.ndarray, ridge: float, *,
                 eps: float = BN_EPS) -> tuple[np.ndarray, dict]:
    """``S`` [|K|, |P|] (column p: the scales s_p) for a chain keeping ``kept``, and
    diagnostics (mean relative residual of the pruned channels' second moments)."""
    p_ = _get(variables["params"], chain.producer)
    C = p_.shape[-1]
    w = np.asarray(p_, np.float64).reshape(-1, C)
    bn_p = _get(variables["params"], chain.bn)
    bn_s = _get(variables["batch_stats"], chain.bn)
    gamma, beta = np.asarray(bn_p["scale"], np.float64), np.asarray(bn_p["bias"], np.float64)
    var = np.asarray(bn_s["var"], np.float64)
    norms = np.linalg.norm(w, axis=0)
    unit = w / np.where(norms > 0, norms, 1.0)
    corr = (unit.T @ unit) * np.sign(gamma)[:, None] * np.sign(gamma)[None, :]
    corr[norms == 0, :] = 0
    corr[:, norms == 0] = 0
    np.fill_diagonal(corr, 1.0)
    std = np.abs(gamma) * np.sqrt(var / (var + eps))
    M = relu_gram(beta, std, corr)
    pruned = np.setdiff1d(np.arange(C), kept)
    mkk = M[np.ix_(kept, kept)]
    lam = ridge * float(np.mean(np.diag(mkk)))
    S = np.linalg.solve(mkk + lam * np.eye(len(kept)), M[np.ix_(kept, pruned)])
    resid = (np.diag(M)[pruned] - 2 * np.sum(S * M[np.ix_(kept, pruned)], axis=0)
             + np.sum(S * (mkk @ S), axis=0))
    rel = resid / np.maximum(np.diag(M)[pruned], 1e-30)
    return S, {"pruned": int(len(pruned)), "mean_relative_residual": float(np.mean(rel)) if len(rel) else 0.0}


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path, value) -> dict:
    """A copy of nested dict ``tree`` with ``path`` replaced (other leaves shared)."""
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def fold(variables: dict, chain: Chain, kept: np.ndarray, S: np.ndarray) -> dict:
    """Apply ``V[:, K] += V[:, P] S^T`` to every consumer of ``chain`` (full-size arrays)."""
    C = _get(variables["params"], chain.producer).shape[-1]
    pruned = np.setdiff1d(np.arange(C), kept)
    params = variables["params"]
    for path, axis in chain.consumers:
        v = np.asarray(_get(params, path))
        vt = np.moveaxis(v.astype(np.float64), axis, -1)
        vt[..., kept] += vt[..., pruned] @ S.T
        params = _set(params, path, np.moveaxis(vt, -1, axis).astype(v.dtype))
    return {**variables, "params": params}


def restrict(cost: CostModel, groups: list[int]) -> CostModel:
    """The cost model over ``groups`` only (:func:`hobs_jax.allocation.restrict`)."""
    return _restrict(cost, groups)


@dataclasses.dataclass(frozen=True)
class UdfcOptions(Options):
    """scope: 'compensable' (prune only the groups UDFC compensates) | 'all' (also the
    others, by group norm without compensation); ridge: lambda relative to the mean kept
    second moment; compensate: False keeps the same selection without folding (the
    ablation)."""

    scope: Literal["compensable", "all"] = "compensable"
    ridge: float = 1e-3
    compensate: bool = True

    def check(self):
        self.require(self.ridge >= 0, "ridge", "must be >= 0")


class UdfcCompensator:
    """Pruned channels folded into the consumers as closed-form combinations of the kept
    ones (module doc); restricts the prunable groups to the compensable chains."""

    name = "udfc"
    Options = UdfcOptions
    needs_data = False

    def check(self, task: PruneTask, o: UdfcOptions) -> None:
        acts = set(task.graph.activations)
        if acts != {"relu"}:
            raise ValueError(f"udfc: {task.name} applies {', '.join(sorted(acts)) or 'no nonlinearity'} to its "
                             f"channels, not ReLU alone; UDFC's ReLU moments need BN then ReLU")
        if "batch_stats" not in task.variables:
            raise ValueError("udfc: variables have no batch_stats; UDFC needs BatchNorm statistics")

    def _chains(self, sel: Selection) -> dict[int, Chain]:
        return sel.shared("udfc_chains", lambda: find_chains(sel.task.graph, sel.task.variables["params"]))

    def groups(self, sel: Selection, o: UdfcOptions):
        if o.scope == "all":
            return None
        chains = self._chains(sel)
        groups = [g for g in sel.task.cost.group_ids if g in chains]
        if not groups:
            raise ValueError(f"udfc: {sel.task.name} has no compensable group (conv-BN-ReLU-conv)")
        return groups

    def compensate(self, sel: Selection, plan, removed, o: UdfcOptions):
        variables = jax.tree.map(np.asarray, dict(sel.task.variables))
        chains = self._chains(sel)
        diag = {}
        for gid, idx in plan.keep:
            if gid in chains and o.compensate:
                kept = np.asarray(idx, np.int64)
                S, d = compensation(variables, chains[gid], kept, float(o.ridge))
                variables = fold(variables, chains[gid], kept, S)
                diag[str(gid)] = d
        return variables, {"compensated": diag, "scope": o.scope}


register_part("compensator", UdfcCompensator())
register_method("udfc", scorer="l2", allocators=("uniform", "global"), compensator="udfc",
                defaults=dict(normalize="mean"),
                summary="UDFC: pruned channels folded into the next layer as closed-form linear "
                        "combinations of kept ones (BN-statistics Gaussian model), no data")
