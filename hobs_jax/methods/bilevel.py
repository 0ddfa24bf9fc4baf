"""``bilevel``: static channel removal and input-dependent (dynamic) channel gating
learned together by a bi-level optimization; the statically removed channels are cut,
the dynamic gates are reported.

Gao, Zhang, Huang, Huang, "BilevelPruning: Unified Dynamic and Static Channel Pruning for
Convolutional Neural Networks", CVPR 2024. The abstract (the only text reachable here)
gives: one bi-level model integrates static and dynamic channel pruning; after pruning
the redundant parameters are removed permanently and the model is fine-tuned with its
dynamic flexibility. The formulation below is ours where the paper's is not known
(docs/methods/bilevel.md marks each choice); the gates follow the same group's public
code (gaosh/NPPM ``Simplified_Gate``: per-channel logits, T = 0.4, bias 3). Implemented,
per round r = 1..R:

* **Static gates** ``s_g = ST(sigmoid((theta_g + 3 + noise) / T))`` [C_g] for every
  maskable group; **dynamic gates** for every group written by one layer followed by a
  BatchNorm (the inner channels of a residual block): ``d_g(x) = ST(sigmoid((W2
  relu(W1 pool(x_in)) + 3 + noise) / T))`` [B, C_g] from the producer's input averaged
  over space, multiplying the BatchNorm's output
  (:meth:`hobs_jax.methods.masks.ChannelMasks.logits` with ``gate_fn``). Channel c of a
  gated group is on for input x when ``s_{g,c} d_{g,c}(x) = 1``.
* **Lower level** (``gate_steps`` Adam steps on the dynamic gates, the static mask fixed
  at its hard value, weights frozen):
  ``min_{W1,W2} CE(f(x; W, s, d(x)), y) + w * log(max(rho(d), q) / q)`` where
  ``rho = E_x[R(s d(x))] / R(s)`` is the dynamic variant's kept fraction of the static
  sub-network's cost and q = ``dynamic_target``.
* **Upper level** (``arch_steps`` Adam steps on theta, with the dynamic gates at their
  lower-level solution, first-order: no differentiation through the lower solve):
  ``min_theta CE(f(x'; W, s(theta), d(x')), y') + w * |log(R(s) / p)|`` on a separate
  calibration split (the upper level's "validation" data), p the target.
* **Weights** (``round_steps`` engine steps): the engine cannot run a gate inside its
  forward pass (it knows no method), so the weights train with the static structure as
  a prior, a partial L2 term on the statically removed channels,
  ``gamma/2 sum_g sum_c (1 - s_{g,c}) ||w_{g,c}||^2``.

The static sub-network (last round's hard ``s``) is what is cut, exported and compared.
``info['bilevel_dynamic']`` reports the dynamic variant on the held-out calibration
images: its effective kept fraction of the dense cost ``E_x[R(s d(x))]`` (gate networks
included), and the top-1 of the static and the gated networks (BatchNorm on batch
statistics, before any fine-tuning).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hobs_jax.methods.base import PruneTask
from hobs_jax.methods.masks import ChannelMasks, SoftCost, partial_l2, resource_loss, st_gate
from hobs_jax.methods.parts import Trained
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.methods.training_time import Rounds, batches, require_training, split
from hobs_jax.options import Options


@dataclasses.dataclass(frozen=True)
class BilevelOptions(Options):
    """rounds: alternations of gates and weights; round_steps: weight steps per round (47
    = 0.1 epoch of Fashion-MNIST at batch 128); gate_steps / arch_steps: lower / upper
    level steps per round; gate_batch: calibration images per step; gate_lr / arch_lr:
    Adam rates; resource_weight: w of both resource terms (the group's code: 2);
    dynamic_target: q, the dynamic variant's mean kept fraction of the static
    sub-network's cost; temperature/offset: the gates' T and bias (0.4, 3); gate_hidden:
    width of each dynamic gate's hidden layer; partial_reg: gamma; holdout_images:
    calibration images kept for the upper level and for the report."""

    rounds: int = 10
    round_steps: int = 47
    gate_steps: int = 20
    arch_steps: int = 20
    gate_batch: int = 128
    gate_lr: float = 1e-3
    arch_lr: float = 1e-2
    resource_weight: float = 2.0
    dynamic_target: float = 0.8
    temperature: float = 0.4
    offset: float = 3.0
    gate_hidden: int = 16
    partial_reg: float = 0.5
    holdout_images: int = 512

    def check(self):
        for key in ("rounds", "round_steps", "gate_batch", "gate_hidden", "holdout_images"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("gate_steps", "arch_steps"):
            self.require(getattr(self, key) >= 0, key, "must be >= 0")
        for key in ("gate_lr", "arch_lr", "temperature"):
            self.require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("resource_weight", "partial_reg"):
            self.require(getattr(self, key) >= 0, key, "must be >= 0")
        self.require(0 < self.dynamic_target <= 1, "dynamic_target", "must be in (0, 1]")

    @classmethod
    def smoke(cls) -> dict:
        return {"rounds": 2, "round_steps": 1, "gate_steps": 1, "arch_steps": 1, "gate_batch": 16,
                "gate_hidden": 4, "holdout_images": 16}


def _init_gates(masks: ChannelMasks, in_dims: dict[int, int], hidden: int, seed: int) -> tuple[dict, dict]:
    """(static logits {gid: [C]} ~ N(0, 1) as their code's ``randn``, dynamic gate MLPs
    {gid: {w1 [C_in, h], b1, w2 [h, C], b2}} with LeCun-normal weights)."""
    rng = np.random.default_rng(seed)
    static = {str(g): jnp.asarray(rng.normal(size=masks.sizes[g]).astype(np.float32)) for g in masks.gids}
    dyn = {}
    for g in sorted(masks.gates):
        c_in, c = in_dims[g], masks.sizes[g]
        dyn[str(g)] = {"w1": jnp.asarray((rng.normal(size=(c_in, hidden)) / np.sqrt(c_in)).astype(np.float32)),
                       "b1": jnp.zeros(hidden), "w2": jnp.asarray((rng.normal(size=(hidden, c))
                                                                   / np.sqrt(hidden)).astype(np.float32)),
                       "b2": jnp.zeros(c)}
    return static, dyn


def _in_dims(masks: ChannelMasks) -> dict[int, int]:
    """Input channels of each gated group's producer (its kernel's contracted last axis)."""
    return {g: masks.param_shapes[layer + ("kernel",)][-2] for g, (layer, _) in masks.gates.items()}


def _steps(masks: ChannelMasks, cost_gids: tuple[int, ...], hidden: int, T: float, off: float):
    """Jitted steps; rates, resource weight and targets are arguments, so one compilation
    serves every run on these masks with the same gate width and gate."""
    gated = tuple(sorted(masks.gates))
    gtx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    atx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    gate_macs = {g: float(masks.param_shapes[masks.gates[g][0] + ("kernel",)][-2] * hidden
                          + hidden * masks.sizes[g]) for g in gated}

    def opt_init(tx, params, lr):
        opt = tx.init(params)
        opt.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return opt

    def static_masks(theta, key):
        keys = jax.random.split(key, len(masks.gids)) if key is not None else [None] * len(masks.gids)
        return {g: st_gate(theta[str(g)], k, T, off) for g, k in zip(masks.gids, keys)}

    def gate_fn(phi, key, store):
        def fn(gid, pooled):
            p = phi[str(gid)]
            z = jax.nn.relu(pooled @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
            k = None if key is None else jax.random.fold_in(key, gid)
            d = st_gate(z, k, T, off)
            store[gid] = d
            return d
        return fn

    def counts(cost_arrays, s, dyn):
        """[B, G] kept counts per example: static sums, s * d for gated groups."""
        some = next(iter(dyn.values())) if dyn else None
        b = some.shape[0] if some is not None else 1
        cols = []
        for i, g in enumerate(cost_gids):
            if g in dyn:
                cols.append(jnp.sum(s[g][None, :] * dyn[g], axis=1))
            elif g in s:
                cols.append(jnp.broadcast_to(jnp.sum(s[g]), (b,)))
            else:
                cols.append(jnp.broadcast_to(cost_arrays[2][i], (b,)))
        return jnp.stack(cols, axis=1)

    def forward(variables, s, phi, x, key):
        store: dict = {}
        out = masks.logits(variables, s, x, gate_fn=gate_fn(phi, key, store) if gated else None)
        return out, store

    def ratios(cost_arrays, s, dyn):
        static = SoftCost.ratio_of(cost_arrays, counts(cost_arrays, s, {})[0])
        per_x = jax.vmap(lambda c: SoftCost.ratio_of(cost_arrays, c))(counts(cost_arrays, s, dyn))
        return static, jnp.mean(per_x)

    @jax.jit
    def lower(phi, gopt, theta, variables, x, y, cost_arrays, w, q, key):
        s = jax.tree.map(jax.lax.stop_gradient, static_masks(theta, None))

        def loss(phi):
            out, dyn = forward(variables, s, phi, x, key)
            ce = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
            static, dynamic = ratios(cost_arrays, s, dyn)
            rho = dynamic / jnp.maximum(static, 1e-6)
            return ce + w * resource_loss(rho, q, two_sided=False), (ce, rho)

        (_, (ce, rho)), g = jax.value_and_grad(loss, has_aux=True)(phi)
        u, gopt = gtx.update(g, gopt, phi)
        return optax.apply_updates(phi, u), gopt, ce, rho

    @jax.jit
    def upper(theta, aopt, phi, variables, x, y, cost_arrays, target, w, key):
        k_s, k_d = jax.random.split(key)

        def loss(theta):
            s = static_masks(theta, k_s)
            out, _ = forward(variables, s, phi, x, k_d)
            ce = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
            static, _ = ratios(cost_arrays, s, {})
            return ce + w * resource_loss(static, target), (ce, static)

        (_, (ce, r)), g = jax.value_and_grad(loss, has_aux=True)(theta)
        u, aopt = atx.update(g, aopt, theta)
        return optax.apply_updates(theta, u), aopt, ce, r

    @jax.jit
    def evaluate(theta, phi, variables, x, y, cost_arrays):
        """Noise-free: (static masks, static acc, gated acc, static ratio, dynamic ratio,
        mean open fraction per gated group)."""
        s = static_masks(theta, None)
        plain = masks.logits(variables, s, x)
        out, dyn = forward(variables, s, phi, x, None)
        static, dynamic = ratios(cost_arrays, s, dyn)
        acc = lambda lg: jnp.mean(jnp.argmax(lg, -1) == y)
        opened = {g: jnp.sum(s[g][None, :] * dyn[g]) / jnp.maximum(jnp.sum(s[g]), 1.0) / x.shape[0]
                  for g in dyn}
        return s, acc(plain), acc(out), static, dynamic, opened

    return (jax.jit(lambda p, lr: opt_init(gtx, p, lr)), jax.jit(lambda p, lr: opt_init(atx, p, lr)), lower, upper,
            evaluate, gate_macs)


class BilevelGates:
    """BilevelPruning's training phase (module doc): ``train(task, options) -> Trained``."""

    name = "bilevel_gates"
    Options = BilevelOptions
    needs_data = True

    def check(self, task: PruneTask, o: BilevelOptions) -> None:
        require_training("bilevel", task, self.steps(o))

    def steps(self, o: BilevelOptions) -> int:
        return int(o.rounds) * int(o.round_steps)

    def transform(self, task, o):
        return None

    def loss(self, task, o):
        return None

    def info(self, o: BilevelOptions) -> dict:
        return {"bilevel": {"rounds": int(o.rounds), "round_steps": int(o.round_steps),
                            "gate_steps": int(o.gate_steps), "arch_steps": int(o.arch_steps),
                            "dynamic_target": float(o.dynamic_target), "partial_reg": float(o.partial_reg)}}

    def train(self, task: PruneTask, o: BilevelOptions) -> Trained:
        masks = ChannelMasks.of(task)
        cost_gids = tuple(task.cost.group_ids)
        hyper = (int(o.gate_hidden), float(o.temperature), float(o.offset))
        ginit, ainit, lower, upper, evaluate, gate_macs = masks.cached(
            ("bilevel", cost_gids, hyper), lambda: _steps(masks, cost_gids, *hyper))
        cost_arrays = SoftCost(task.cost, task.metric).arrays
        theta, phi = _init_gates(masks, _in_dims(masks), int(o.gate_hidden), int(task.seed))
        gopt, aopt = ginit(phi, float(o.gate_lr)), ainit(theta, float(o.arch_lr))
        w, q = jnp.float32(o.resource_weight), jnp.float32(o.dynamic_target)
        if task.calib is None:
            raise ValueError(f"{task.name}: this method trains on calibration data (task.calib is None)")
        lower_data, upper_data = split(task.calib, int(o.holdout_images))
        it_lo = batches(lower_data, int(o.gate_batch), int(task.seed))
        it_up = batches(upper_data, int(o.gate_batch), int(task.seed) + 1)
        key = jax.random.key(int(task.seed))
        target = jnp.float32(task.target)
        variables = {k: task.variables[k] for k in task.variables}
        xh, yh = jnp.asarray(upper_data.images), jnp.asarray(upper_data.labels)
        rounds, history = Rounds(task), []
        for r in range(int(o.rounds)):
            ce_lo = rho = ce_up = ratio = float("nan")
            for _ in range(int(o.gate_steps)):
                x, y = next(it_lo)
                key, k = jax.random.split(key)
                phi, gopt, ce_lo, rho = lower(phi, gopt, theta, variables, jnp.asarray(x), jnp.asarray(y),
                                              cost_arrays, w, q, k)
            for _ in range(int(o.arch_steps)):
                x, y = next(it_up)
                key, k = jax.random.split(key)
                theta, aopt, ce_up, ratio = upper(theta, aopt, phi, variables, jnp.asarray(x), jnp.asarray(y),
                                                  cost_arrays, target, w, k)
            s, acc_s, acc_d, r_s, r_d, opened = evaluate(theta, phi, variables, xh, yh, cost_arrays)
            s = {g: np.asarray(v) for g, v in s.items()}
            history.append({"round": r, "lower_ce": float(ce_lo), "rho": float(rho), "upper_ce": float(ce_up),
                            "static_ratio": float(r_s), "dynamic_ratio": float(r_d),
                            "static_top1": float(acc_s), "dynamic_top1": float(acc_d)})
            variables = rounds.train(variables, int(o.round_steps),
                                     partial_l2(masks, {g: 1.0 - v for g, v in s.items()}, float(o.partial_reg)))
        # The report on the final weights (the gates were fitted on the previous ones).
        s, acc_s, acc_d, r_s, r_d, opened = evaluate(theta, phi, variables, xh, yh, cost_arrays)
        s = {g: np.asarray(v) for g, v in s.items()}
        gates_fraction = sum(gate_macs.values()) / _dense_macs(task)
        keep = {g: max(1, int(v.sum())) for g, v in s.items()}
        # The gate networks' own MACs count against the dynamic variant (params: not a per-input cost).
        gate_cost = gates_fraction if task.metric == "macs" else 0.0
        dynamic = {"static_ratio": float(r_s), "effective_ratio": float(r_d) + gate_cost,
                   "gate_ratio": gates_fraction, "static_top1": float(acc_s), "dynamic_top1": float(acc_d),
                   "images": int(xh.shape[0]), "metric": task.metric,
                   "open_fraction": {str(g): float(v) for g, v in opened.items()}}
        decisions = {"keep": {str(g): k for g, k in keep.items()},
                     "static_masks": {str(g): np.asarray(v, np.int8).tolist() for g, v in s.items()},
                     "dynamic": dynamic, "rounds": history}
        info = {"bilevel_training": {"steps": rounds.steps, "seconds": round(rounds.seconds, 2)},
                "bilevel_dynamic": dynamic}
        return Trained(variables, keep, {g: np.asarray(theta[str(g)], np.float64) for g in masks.gids},
                       decisions, info)


def _dense_macs(task: PruneTask) -> float:
    c = task.cost
    return float(c.macs(c.full))


register_part("regularizer", BilevelGates())
register_method("bilevel", regularizer="bilevel_gates", scorer="learned", allocators=("learned",),
                compensator="none",
                summary="BilevelPruning (CVPR 2024): static channel removal and input-dependent gates "
                        "learned by a bi-level optimization; the static sub-network is cut")
