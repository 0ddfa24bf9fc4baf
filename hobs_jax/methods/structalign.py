"""``structalign``: an architecture generator proposes the sub-network; partial
regularization pulls only the weights outside it toward zero, so the kept structure and
the weights align before the cut.

Gao, Zhang, Zhang, Huang, Huang, "Structural Alignment for Network Pruning through
Partial Regularization", ICCV 2023. Only the title, authors and the issue's summary
were reachable here (no paper text, no official code); the generator, its gate and its
resource term follow the same group's public pruning code (gaosh/NPPM
``models/hypernet.py`` ``HyperStructure``, gaosh/DDNP ``utils.py``
``Flops_constraint_resnet``), and docs/methods/structalign.md marks every assumption.
Implemented, per round r = 1..R:

1. **Generator** (weights W frozen; ``gen_steps`` AdamW steps on calibration batches):
   fixed orthogonal inputs ``u_g`` [64] per group, a bidirectional GRU (128 per
   direction) over the groups, LayerNorm, ReLU and one linear head per group give
   logits ``o_g`` [C_g]; the mask is the straight-through binary concrete gate
   ``m_g = ST(sigmoid((o_g + 3 + noise) / 0.4))`` (:func:`hobs_jax.methods.masks.st_gate`)
   and
   ``min_phi  CE(f(x; W, m(phi)), y) + w * |log(R(m) / p)|``
   with R(m) the kept fraction of the task's metric at soft counts ``k_g = sum_c m_{g,c}``
   (:class:`hobs_jax.methods.masks.SoftCost`) and p the target.
2. **Partial regularization** (``round_steps`` engine steps): with the generator's
   noise-free mask ``m*`` (its sub-network S_r),
   ``min_W  CE(f(x; W), y) + gamma/2 * sum_g sum_c (1 - m*_{g,c}) ||w_{g,c}||^2``
   over every member slice of each channel outside S_r
   (:func:`hobs_jax.methods.masks.partial_l2`); the channels inside S_r are not
   regularized at all (the "partial" of the title).

The architecture is the last round's ``m*`` (``Trained.keep = sum_c m*``), channels ranked
by the generator's logits; the ``learned`` allocator brings it onto the budget exactly.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hobs_jax.methods.base import PruneTask
from hobs_jax.methods.masks import ChannelMasks, SoftCost, partial_l2, resource_loss, st_gate
from hobs_jax.methods.parts import Trained
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.methods.training_time import Rounds, batches, require_training
from hobs_jax.options import Options


@dataclasses.dataclass(frozen=True)
class StructAlignOptions(Options):
    """rounds: generator/weight alternations; round_steps: weight steps per round (47 =
    0.1 epoch of Fashion-MNIST at batch 128); gen_steps: generator steps per round;
    gen_batch: calibration images per generator step; gen_lr: AdamW rate (the group's
    code: 1e-3, weight decay 1e-4); resource_weight: w of the resource term (their
    code: 2); temperature/offset: the gate's T and bias (their code: 0.4 and 3);
    partial_reg: gamma of the partial regularization; gen_hidden: GRU width per direction."""

    rounds: int = 10
    round_steps: int = 47
    gen_steps: int = 30
    gen_batch: int = 128
    gen_lr: float = 1e-3
    resource_weight: float = 2.0
    temperature: float = 0.4
    offset: float = 3.0
    partial_reg: float = 0.5
    gen_hidden: int = 128

    def check(self):
        for key in ("rounds", "round_steps", "gen_batch", "gen_hidden"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(self.gen_steps >= 0, "gen_steps", "must be >= 0")
        for key in ("gen_lr", "temperature"):
            self.require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("resource_weight", "partial_reg"):
            self.require(getattr(self, key) >= 0, key, "must be >= 0")

    @classmethod
    def smoke(cls) -> dict:
        return {"rounds": 2, "round_steps": 1, "gen_steps": 2, "gen_batch": 16, "gen_hidden": 8}


class ArchGenerator(nn.Module):
    """Fixed inputs [G, 64] -> Bi-GRU -> LayerNorm -> ReLU -> per-group linear heads:
    a tuple of G logit vectors [C_g] (module doc, step 1)."""

    sizes: tuple[int, ...]
    hidden: int

    @nn.compact
    def __call__(self, inputs):
        h = nn.Bidirectional(nn.RNN(nn.GRUCell(self.hidden)), nn.RNN(nn.GRUCell(self.hidden)))(inputs[None])[0]
        h = nn.relu(nn.LayerNorm()(h))
        return tuple(nn.Dense(s, use_bias=False, name=f"head_{i}")(h[i]) for i, s in enumerate(self.sizes))


def orthogonal_inputs(groups: int, dim: int, seed: int) -> np.ndarray:
    """[groups, dim] rows of a random orthogonal matrix (``nn.init.orthogonal_`` of their
    code), fixed, not trained."""
    a = np.random.default_rng(seed).normal(size=(max(groups, dim), dim))
    q, r = np.linalg.qr(a)
    return (q * np.sign(np.diag(r))[None, :])[:groups].astype(np.float32)


def _steps(masks: ChannelMasks, cost_gids: tuple[int, ...], hidden: int, T: float, off: float):
    """Jitted (init, step, propose); rates and weights are arguments, so one compilation
    serves every run on these masks with the same generator width and gate."""
    sizes = tuple(masks.sizes[g] for g in masks.gids)
    gen = ArchGenerator(sizes, hidden)
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4)

    def kept(cost_arrays, m):
        sums = {g: v.sum() for g, v in m.items()}
        counts = jnp.stack([sums[g] if g in sums else cost_arrays[2][i] for i, g in enumerate(cost_gids)])
        return SoftCost.ratio_of(cost_arrays, counts)

    def sample(gp, inputs, key):
        logits = gen.apply(gp, inputs)
        keys = jax.random.split(key, len(sizes)) if key is not None else [None] * len(sizes)
        return logits, {g: st_gate(lg, k, T, off) for g, lg, k in zip(masks.gids, logits, keys)}

    @jax.jit
    def step(gp, opt, variables, inputs, x, y, cost_arrays, target, w, key):
        def loss(gp):
            _, m = sample(gp, inputs, key)
            out = masks.logits(variables, m, x)
            ce = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
            r = kept(cost_arrays, m)
            return ce + w * resource_loss(r, target), (ce, r)

        (lv, (ce, ratio)), g = jax.value_and_grad(loss, has_aux=True)(gp)
        u, opt = tx.update(g, opt, gp)
        return optax.apply_updates(gp, u), opt, ce, ratio

    @jax.jit
    def propose(gp, inputs, cost_arrays):
        logits, m = sample(gp, inputs, None)
        return logits, m, kept(cost_arrays, m)

    @jax.jit
    def init(key, inputs, lr):
        gp = gen.init(key, inputs)
        opt = tx.init(gp)
        opt.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return gp, opt

    return init, step, propose


class StructAlignGenerator:
    """StructAlign's training phase (module doc): ``train(task, options) -> Trained``."""

    name = "structalign_generator"
    Options = StructAlignOptions
    needs_data = True

    def check(self, task: PruneTask, o: StructAlignOptions) -> None:
        require_training("structalign", task, self.steps(o))

    def steps(self, o: StructAlignOptions) -> int:
        return int(o.rounds) * int(o.round_steps)

    def transform(self, task, o):
        return None

    def loss(self, task, o):
        return None

    def info(self, o: StructAlignOptions) -> dict:
        return {"structalign": {"rounds": int(o.rounds), "round_steps": int(o.round_steps),
                                "gen_steps": int(o.gen_steps), "partial_reg": float(o.partial_reg)}}

    def train(self, task: PruneTask, o: StructAlignOptions) -> Trained:
        masks = ChannelMasks.of(task)
        cost_gids = tuple(task.cost.group_ids)
        hyper = (int(o.gen_hidden), float(o.temperature), float(o.offset))
        init, step, propose = masks.cached(("structalign", cost_gids, hyper),
                                           lambda: _steps(masks, cost_gids, *hyper))
        cost_arrays = SoftCost(task.cost, task.metric).arrays
        inputs = jnp.asarray(orthogonal_inputs(len(masks.gids), 64, int(task.seed)))
        key = jax.random.key(int(task.seed))
        key, k0 = jax.random.split(key)
        gp, opt = init(k0, inputs, float(o.gen_lr))
        w = jnp.float32(o.resource_weight)
        if task.calib is None:
            raise ValueError(f"{task.name}: this method trains on calibration data (task.calib is None)")
        it = batches(task.calib, int(o.gen_batch), int(task.seed))
        target = jnp.float32(task.target)
        variables = {k: task.variables[k] for k in task.variables}
        rounds, history = Rounds(task), []
        for r in range(int(o.rounds)):
            ce = ratio = float("nan")
            for _ in range(int(o.gen_steps)):
                x, y = next(it)
                key, k = jax.random.split(key)
                gp, opt, ce, ratio = step(gp, opt, variables, inputs, jnp.asarray(x), jnp.asarray(y), cost_arrays,
                                          target, w, k)
            logits, m, r_det = propose(gp, inputs, cost_arrays)
            m = {g: np.asarray(v) for g, v in m.items()}
            history.append({"round": r, "generator_ce": float(ce), "sampled_ratio": float(ratio),
                            "proposed_ratio": float(r_det),
                            "keep": {str(g): int(v.sum()) for g, v in m.items()}})
            variables = rounds.train(variables, int(o.round_steps),
                                     partial_l2(masks, {g: 1.0 - v for g, v in m.items()}, float(o.partial_reg)))
        logits = {g: np.asarray(lg, np.float64) for g, lg in zip(masks.gids, logits)}
        keep = {g: max(1, int(v.sum())) for g, v in m.items()}
        decisions = {"keep": {str(g): k for g, k in keep.items()},
                     "masks": {str(g): np.asarray(v, np.int8).tolist() for g, v in m.items()},
                     "rounds": history}
        info = {"structalign_training": {"steps": rounds.steps, "seconds": round(rounds.seconds, 2),
                                         "proposed_ratio": history[-1]["proposed_ratio"]}}
        return Trained(variables, keep, logits, decisions, info)


register_part("regularizer", StructAlignGenerator())
register_method("structalign", regularizer="structalign_generator", scorer="learned", allocators=("learned",),
                compensator="none",
                summary="StructAlign (ICCV 2023): architecture generator + partial regularization of the "
                        "weights outside its sub-network")
