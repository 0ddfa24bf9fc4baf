"""``jtp``: jointly training and pruning with an RL agent, a learned model of the changing
reward, and alignment of the weights to the agent's sub-network.

Ganjdanesh, Gao, Huang, "Jointly Training and Pruning CNNs via Learnable Agent Guidance
and Alignment", CVPR 2024 (arXiv 2403.19490). What the stored public material gives
(abstract, Fig. 1 caption): training alternates between the weights (one epoch) and
several episodes of an agent; each action prunes one layer, the state holds the actions
on previous layers and the remaining layers' FLOPs, the reward is the sub-network's
accuracy; because the weights move, the reward is non-stationary, so every epoch has a
learnable embedding, a recurrent model over the embeddings gives the agent a state ``z``
of the environment, and a decoder trained to reconstruct the observed rewards trains the
embeddings and the recurrent model; the weights are softly regularized to align with the
sub-network the agent selects. The paper's text beyond that was not reachable here;
docs/methods/jtp.md lists every gap and how it is filled. Implemented, per round r:

1. **Episodes** (weights frozen): for group t = 1..G (the cost model's order) the agent
   sees ``s_t = [t/G, size_t/max size, dep_t, removed_t, removable_t, needed_t,
   a_{t-1}] (+) z_r`` and acts ``a_t = mu(s_t) + noise`` in [lbound, 1] (keep ratio),
   clipped so the target stays reachable with every later group at its floor (AMC);
   the counts are then repaired onto the budget (:func:`hobs_jax.allocation.repair`).
   Each group keeps its ``k_t`` channels of largest group L2 norm. Reward ``R`` = top-1
   of the masked network (:class:`hobs_jax.methods.masks.ChannelMasks`, BatchNorm with
   batch statistics) on ``reward_images`` held-out calibration images.
2. **Environment model** (the paper's Sec. 3.2.1): embeddings ``e_0..e_R``, a GRU,
   ``z_r = GRU(e_0..e_r)``, and a decoder ``D(z_r, a) -> R`` fitted by MSE to every
   reward observed so far: ``min_{e, GRU, D} sum_i (D(z_{r_i}, a_i) - R_i)^2``.
3. **Agent**: actor ``mu(s (+) z)`` and critic ``Q(s (+) z, a)`` (DDPG, as AMC; the critic
   regresses each step on the episode's reward minus a moving baseline, the return of
   a one-reward episode with discount 1, as R-SPAR's agent does).
4. **Alignment** (Sec. 3.2.3): the round's best episode is the selected sub-network S_r;
   the weights train ``round_steps`` steps through the engine with
   ``L = CE + lambda/2 sum_g sum_{c not in S_r} ||w_{g,c}||^2`` (every member slice of
   each removed channel, :func:`hobs_jax.methods.masks.partial_l2`).

After the last round one more set of episodes runs on the final weights; its best
episode is the architecture (``Trained.keep``), the channels ranked by their L2 norms.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hobs_jax import allocation
from hobs_jax.graph import group_l2_scores
from hobs_jax.methods.base import PruneTask
from hobs_jax.methods.masks import ChannelMasks, partial_l2, topk_mask
from hobs_jax.methods.parts import Trained
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.methods.training_time import Rounds, require_training, split
from hobs_jax.options import Options

STATE = 7


@dataclasses.dataclass(frozen=True)
class JTPOptions(Options):
    """rounds: agent/weight iterations (the paper: one per epoch); round_steps: weight
    steps per round (47 = 0.1 epoch of Fashion-MNIST at batch 128); episodes: agent
    episodes per round (+1 noise-free); warmup: random episodes before the policy acts;
    lbound: smallest keep ratio (AMC: 0.2); align: lambda of the alignment term;
    reward_images: held-out calibration images rewards are measured on; embed_dim: size
    of the epoch embeddings and of z; hidden: width of the agent, GRU input and decoder;
    actor_lr/critic_lr/model_lr: Adam rates; noise/noise_decay: exploration sigma and its
    decay per episode; updates: actor-critic updates per episode; model_steps: decoder
    fitting steps per round; batch: transitions per update."""

    rounds: int = 10
    round_steps: int = 47
    episodes: int = 16
    warmup: int = 8
    lbound: float = 0.2
    align: float = 0.5
    reward_images: int = 512
    embed_dim: int = 8
    hidden: int = 64
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    model_lr: float = 1e-3
    noise: float = 0.3
    noise_decay: float = 0.97
    updates: int = 8
    model_steps: int = 50
    batch: int = 64

    def check(self):
        for key in ("rounds", "round_steps", "episodes", "reward_images", "embed_dim", "hidden", "batch"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("warmup", "updates", "model_steps"):
            self.require(getattr(self, key) >= 0, key, "must be >= 0")
        self.require(0 < self.lbound <= 1, "lbound", "must be in (0, 1]")
        self.require(self.align >= 0, "align", "must be >= 0")
        for key in ("actor_lr", "critic_lr", "model_lr"):
            self.require(getattr(self, key) > 0, key, "must be > 0")
        self.require(self.noise >= 0, "noise", "must be >= 0")
        self.require(0 < self.noise_decay <= 1, "noise_decay", "must be in (0, 1]")

    @classmethod
    def smoke(cls) -> dict:
        return {"rounds": 2, "round_steps": 1, "episodes": 2, "warmup": 1, "reward_images": 16,
                "hidden": 16, "updates": 2, "model_steps": 5, "batch": 8}


class MLP(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


class EnvModel(nn.Module):
    """Epoch embeddings -> GRU -> z_r; decoder D(z_r, actions) -> reward."""

    rounds: int
    embed_dim: int
    hidden: int

    def setup(self):
        self.embed = self.param("embed", nn.initializers.normal(0.1), (self.rounds, self.embed_dim))
        self.rnn = nn.RNN(nn.GRUCell(features=self.embed_dim))
        self.decoder = MLP(self.hidden, 1)

    def z(self):
        """[rounds, embed_dim]: z_r = GRU state after e_0..e_r."""
        return self.rnn(self.embed[None])[0]

    def __call__(self, r, actions):
        """Predicted rewards [B] for round indices r [B] and actions [B, G]."""
        z = self.z()[r]
        return self.decoder(jnp.concatenate([z, actions], axis=-1))[:, 0]


@functools.lru_cache(maxsize=8)
def _nets(state_dim: int, groups: int, rounds: int, embed_dim: int, hidden: int,
          actor_lr: float, critic_lr: float, model_lr: float):
    actor, critic = MLP(hidden, 1), MLP(hidden, 1)
    env = EnvModel(rounds, embed_dim, hidden)
    atx, ctx_, mtx = optax.adam(actor_lr), optax.adam(critic_lr), optax.adam(model_lr)

    @jax.jit
    def act(pa, s):
        return jax.nn.sigmoid(actor.apply(pa, s))[:, 0]

    @jax.jit
    def update(st, s, a, r):
        def closs(pc):
            return jnp.mean((critic.apply(pc, jnp.concatenate([s, a], 1))[:, 0] - r) ** 2)

        lc, gc = jax.value_and_grad(closs)(st["critic"])
        u, co = ctx_.update(gc, st["copt"], st["critic"])
        pc = optax.apply_updates(st["critic"], u)

        def aloss(pa):
            mu = jax.nn.sigmoid(actor.apply(pa, s))
            return -jnp.mean(critic.apply(pc, jnp.concatenate([s, mu], 1)))

        la, ga = jax.value_and_grad(aloss)(st["actor"])
        u, ao = atx.update(ga, st["aopt"], st["actor"])
        return dict(st, actor=optax.apply_updates(st["actor"], u), critic=pc, aopt=ao, copt=co), lc

    @jax.jit
    def fit_env(pm, opt, r, a, rew):
        def loss(p):
            return jnp.mean((env.apply(p, r, a) - rew) ** 2)

        lm, g = jax.value_and_grad(loss)(pm)
        u, opt = mtx.update(g, opt, pm)
        return optax.apply_updates(pm, u), opt, lm

    @jax.jit
    def zs(pm):
        return env.apply(pm, method=EnvModel.z)

    @jax.jit
    def init(key):
        ka, kc, km = jax.random.split(key, 3)
        pa = actor.init(ka, jnp.zeros((1, state_dim)))
        pc = critic.init(kc, jnp.zeros((1, state_dim + 1)))
        pm = env.init(km, jnp.zeros((1,), jnp.int32), jnp.zeros((1, groups)))
        return ({"actor": pa, "critic": pc, "aopt": atx.init(pa), "copt": ctx_.init(pc)}, pm, mtx.init(pm))

    return init, act, update, fit_env, zs


class Episodes:
    """The budget side of an episode over the cost model's groups (AMC clipping)."""

    def __init__(self, cost, target: float, metric: str, floor: np.ndarray, round_to: int):
        self.cost, self.target, self.metric, self.round_to = cost, target, metric, round_to
        self.floor = np.asarray(floor, np.float64)
        self.sizes = cost.sizes.astype(np.float64)
        full = self.sizes.copy()
        self.dep = np.array([1.0 - cost.ratio(np.where(np.arange(len(full)) == t, 1.0, full), metric)
                             for t in range(len(full))])

    def state(self, t: int, keep: np.ndarray, prev: float) -> np.ndarray:
        G = len(self.sizes)
        r_cur = self.cost.ratio(keep, self.metric)
        low = keep.copy()
        low[t:] = self.floor[t:]
        r_min = self.cost.ratio(low, self.metric)
        return np.array([t / max(G - 1, 1), self.sizes[t] / self.sizes.max(), self.dep[t], 1.0 - r_cur,
                         r_cur - r_min, max(0.0, r_cur - self.target), prev], np.float32)

    def clip(self, t: int, keep: np.ndarray, ratio: float) -> int:
        """The count for keep ratio ``ratio`` at step t, at most the largest count that keeps
        the target reachable with every later group at its floor."""
        size = int(self.sizes[t])
        lo = int(self.floor[t])
        if lo >= size:
            return size
        counts = np.arange(lo, size + 1, dtype=np.float64)
        trial = np.repeat(keep[None, :], len(counts), axis=0)
        trial[:, t] = counts
        trial[:, t + 1:] = self.floor[t + 1:]
        ok = np.array([self.cost.ratio(k, self.metric) <= self.target for k in trial])
        top = int(counts[np.flatnonzero(ok)[-1]]) if ok.any() else lo
        want = int(np.ceil(ratio * size - 1e-9))
        if self.round_to > 1 and want < size:
            want = int(np.ceil(want / self.round_to) * self.round_to)
        return int(np.clip(want, lo, max(top, lo)))

    def finish(self, keep: np.ndarray) -> np.ndarray:
        return allocation.repair(self.cost, keep, self.target, self.metric, round_to=self.round_to,
                                 floor=self.floor)


@dataclasses.dataclass
class _Replay:
    states: list
    actions: list
    rewards: list


class JTPAgent:
    """JTP's training phase (module doc): ``train(task, options) -> Trained``."""

    name = "jtp_agent"
    Options = JTPOptions
    needs_data = True

    def check(self, task: PruneTask, o: JTPOptions) -> None:
        require_training("jtp", task, self.steps(o))

    def steps(self, o: JTPOptions) -> int:
        return int(o.rounds) * int(o.round_steps)

    def transform(self, task, o):
        return None

    def loss(self, task, o):
        return None

    def info(self, o: JTPOptions) -> dict:
        return {"jtp": {"rounds": int(o.rounds), "round_steps": int(o.round_steps), "episodes": int(o.episodes),
                        "align": float(o.align)}}

    def train(self, task: PruneTask, o: JTPOptions) -> Trained:
        masks = ChannelMasks.of(task)
        cost, gids = task.cost, tuple(task.cost.group_ids)
        floor = np.array([max(1.0, np.ceil(o.lbound * s)) if g in masks.sites else float(s)
                          for g, s in zip(gids, cost.sizes)])
        allocation.check_reachable(cost, task.target, task.metric, floor)
        env = Episodes(cost, task.target, task.metric, floor, task.round_to)
        if task.calib is None:
            raise ValueError(f"{task.name}: this method trains on calibration data (task.calib is None)")
        _, reward_set = split(task.calib, int(o.reward_images))
        n = min(int(o.reward_images), len(reward_set.images))
        xr, yr = jnp.asarray(reward_set.images[-n:]), jnp.asarray(reward_set.labels[-n:])
        init, act, update, fit_env, zs = _nets(STATE + int(o.embed_dim), len(gids), int(o.rounds) + 1,
                                               int(o.embed_dim), int(o.hidden), float(o.actor_lr),
                                               float(o.critic_lr), float(o.model_lr))
        agent, pm, mopt = init(jax.random.key(int(task.seed)))
        rng = np.random.default_rng(int(task.seed))

        accuracy = masks.accuracy_fn()
        variables = {k: task.variables[k] for k in task.variables}
        rounds = Rounds(task)
        replay = _Replay([], [], [])
        observed_r, observed_a, observed_rew = [], [], []
        baseline, sigma, episode_no = None, float(o.noise), 0
        history = []
        best = None
        for r in range(int(o.rounds) + 1):
            l2 = group_l2_scores(task.graph, variables)
            z = np.asarray(zs(pm))[r]
            round_eps = []
            for e in range(int(o.episodes) + 1):
                deterministic = e == int(o.episodes)
                keep = cost.sizes.astype(np.float64).copy()
                states, acts, prev = [], [], 1.0
                for t, g in enumerate(gids):
                    if g not in masks.sites:
                        continue
                    s = np.concatenate([env.state(t, keep, prev), z]).astype(np.float32)
                    if not deterministic and episode_no < int(o.warmup):
                        a = float(rng.uniform(o.lbound, 1.0))
                    else:
                        mu = float(act(agent["actor"], jnp.asarray(s[None]))[0])
                        a = o.lbound + (1 - o.lbound) * mu
                        if not deterministic:
                            a = float(np.clip(rng.normal(a, sigma), o.lbound, 1.0))
                    keep[t] = env.clip(t, keep, a)
                    states.append(s)
                    acts.append((a - o.lbound) / max(1 - o.lbound, 1e-9))
                    prev = a
                keep = env.finish(keep)
                m = tuple(jnp.asarray(topk_mask(l2[g], int(keep[gids.index(g)]))) for g in masks.gids)
                reward = float(accuracy(variables, m, xr, yr))
                ratios = keep / cost.sizes
                round_eps.append((reward, keep.copy()))
                observed_r.append(r)
                observed_a.append(ratios.astype(np.float32))
                observed_rew.append(reward)
                baseline = reward if baseline is None else 0.95 * baseline + 0.05 * reward
                replay.states += states
                replay.actions += acts
                replay.rewards += [reward] * len(states)
                if not deterministic:
                    episode_no += 1
                    sigma *= float(o.noise_decay)
                if len(replay.states) >= 2 and int(o.updates):
                    S, A, R = (np.asarray(replay.states, np.float32), np.asarray(replay.actions, np.float32)[:, None],
                               np.asarray(replay.rewards, np.float32))
                    for _ in range(int(o.updates)):
                        i = rng.integers(0, len(S), min(int(o.batch), len(S)))
                        agent, _ = update(agent, jnp.asarray(S[i]), jnp.asarray(A[i]), jnp.asarray(R[i] - baseline))
            lm = float("nan")
            for _ in range(int(o.model_steps)):
                pm, mopt, lm = fit_env(pm, mopt, jnp.asarray(observed_r, jnp.int32), jnp.asarray(np.stack(observed_a)),
                                       jnp.asarray(observed_rew, jnp.float32))
            rewards = [x for x, _ in round_eps]
            best = max(round_eps, key=lambda x: x[0])
            history.append({"round": r, "best_reward": best[0], "mean_reward": float(np.mean(rewards)),
                            "noise_free_reward": round_eps[-1][0], "decoder_mse": float(lm),
                            "keep": {str(g): int(k) for g, k in zip(gids, best[1])}})
            if r == int(o.rounds):
                break
            removed = {g: 1.0 - topk_mask(l2[g], int(best[1][gids.index(g)])) for g in masks.gids}
            variables = rounds.train(variables, int(o.round_steps), partial_l2(masks, removed, float(o.align)))
        assert best is not None  # options require rounds >= 1: at least one round ran
        final_l2 = group_l2_scores(task.graph, variables)
        keep = {g: int(k) for g, k in zip(gids, best[1]) if g in masks.sites}
        decisions = {"ratios": {str(g): k / masks.sizes[g] for g, k in keep.items()}, "reward": best[0],
                     "rounds": history}
        info = {"jtp_training": {"steps": rounds.steps, "seconds": round(rounds.seconds, 2),
                                 "final_reward": best[0], "episodes": len(observed_rew)}}
        return Trained(variables, keep, {g: final_l2[g] for g in keep}, decisions, info)


register_part("regularizer", JTPAgent())
register_method("jtp", regularizer="jtp_agent", scorer="learned", allocators=("learned",), compensator="none",
                summary="JTP (CVPR 2024): RL agent + learned reward dynamics choose per-layer ratios while the "
                        "weights train aligned to its sub-network")
