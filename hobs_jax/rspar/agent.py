"""DDPG agent for R-SPAR (continuous keep ratios), in Flax + optax.

Why DDPG and not PPO (docs/rspar.md): the action is one continuous ratio per step and the
reward arrives once per episode; each episode costs a forward pass of the whole network,
so sample efficiency matters most. DDPG is off-policy: every past transition stays in the
replay buffer and is reused by many updates, while PPO discards its rollouts after a few
epochs and needs many more episodes. AMC (He et al., ECCV 2018) made the same choice.

Deviation from AMC's critic target, with the reason: the reward is zero at every step but
the last, and the discount is 1, so the Monte-Carlo return from any step of an episode is
the episode's reward R. The critic regresses ``Q(s_t, a_t)`` directly on ``R - b`` (b a
moving-average baseline), which is the unbiased target AMC's bootstrapped one approximates,
without target networks. The actor ascends ``Q(s, mu(s))``.

Exploration: AMC's truncated normal noise around the actor's action, with sigma decaying
geometrically after the warm-up episodes (which act uniformly at random).

Shapes: states [B, F] float32, actions [B, 1] in [0, 1] (mapped to [lbound, 1] by the
caller), rewards [B].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hobs_jax.options import Options, to_config


@dataclasses.dataclass(frozen=True)
class AgentOptions(Options):
    """hidden: MLP width (AMC: 300); actor_lr/critic_lr: Adam rates (AMC: 1e-4/1e-3);
    batch: transitions per update; replay: buffer capacity (transitions); updates: gradient
    updates per episode (0 = one per group, as AMC); noise/noise_decay: initial sigma of the
    truncated-normal exploration and its per-episode decay (AMC: 0.5, 0.95);
    baseline_decay: moving-average reward baseline (AMC: 0.95); imitate: behaviour-cloning
    steps toward the best allocation so far when the warm-up ends (0 = off, AMC), so the
    agent's exploration starts around the best reference instead of from scratch."""

    hidden: int = 300
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch: int = 64
    replay: int = 20000
    updates: int = 0
    noise: float = 0.5
    noise_decay: float = 0.95
    baseline_decay: float = 0.95
    imitate: int = 0

    def check(self):
        for key in ("hidden", "batch", "replay"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("updates", "imitate"):
            self.require(getattr(self, key) >= 0, key, "must be >= 0")
        for key in ("actor_lr", "critic_lr"):
            self.require(getattr(self, key) > 0, key, "must be > 0")
        self.require(self.noise >= 0, "noise", "must be >= 0")
        for key in ("noise_decay", "baseline_decay"):
            self.require(0 <= getattr(self, key) <= 1, key, "must be in [0, 1]")


def default_config() -> ml_collections.ConfigDict:
    """:class:`AgentOptions`' defaults as a ConfigDict (the search takes either)."""
    return to_config(AgentOptions.defaults())


class MLP(nn.Module):
    """[B, in] -> [B, out]: two hidden ReLU layers."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)



@dataclasses.dataclass
class Replay:
    """Ring buffer of (state [F], action, reward) transitions (numpy, checkpointed)."""

    capacity: int
    dim: int
    states: np.ndarray | None = None  # allocated in __post_init__ unless restored
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    size: int = 0
    pos: int = 0

    def __post_init__(self):
        if self.states is None:
            self.states = np.zeros((self.capacity, self.dim), np.float32)
            self.actions = np.zeros((self.capacity, 1), np.float32)
            self.rewards = np.zeros((self.capacity,), np.float32)

    def add(self, states: np.ndarray, actions: np.ndarray, reward: float) -> None:
        assert self.states is not None and self.actions is not None and self.rewards is not None
        for s, a in zip(states, actions):
            self.states[self.pos], self.actions[self.pos, 0], self.rewards[self.pos] = s, a, reward
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int):
        assert self.states is not None and self.actions is not None and self.rewards is not None
        i = rng.integers(0, self.size, n)
        return self.states[i], self.actions[i], self.rewards[i]


@functools.lru_cache(maxsize=8)
def _functions(state_dim: int, hidden: int, actor_lr: float, critic_lr: float):
    """(actor, critic, actor_tx, critic_tx, jit(act), jit(update)), cached per shape and
    rates so repeated searches in one process compile once."""
    actor, critic = MLP(hidden, 1), MLP(hidden, 1)
    actor_tx, critic_tx = optax.adam(actor_lr), optax.adam(critic_lr)

    def act(pa, s):
        return jax.nn.sigmoid(actor.apply(pa, s))[:, 0]

    def update(st, s, a, r):
        def critic_loss(pc):
            q = critic.apply(pc, jnp.concatenate([s, a], axis=1))[:, 0]
            return jnp.mean((q - r) ** 2)

        lc, gc = jax.value_and_grad(critic_loss)(st["critic"])
        upd, copt = critic_tx.update(gc, st["critic_opt"], st["critic"])
        pc = optax.apply_updates(st["critic"], upd)

        def actor_loss(pa):
            mu = jax.nn.sigmoid(actor.apply(pa, s))
            return -jnp.mean(critic.apply(pc, jnp.concatenate([s, mu], axis=1)))

        la, ga = jax.value_and_grad(actor_loss)(st["actor"])
        upd, aopt = actor_tx.update(ga, st["actor_opt"], st["actor"])
        pa = optax.apply_updates(st["actor"], upd)
        return {"actor": pa, "critic": pc, "actor_opt": aopt, "critic_opt": copt}, lc, la

    clone_tx = optax.adam(1e-3)  # its own (faster) optimizer: a one-off supervised fit

    def clone(pa, opt, s, a):
        """One behaviour-cloning step: the actor regresses on actions ``a`` [B, 1]."""
        def loss(pa):
            return jnp.mean((jax.nn.sigmoid(actor.apply(pa, s)) - a) ** 2)

        l, g = jax.value_and_grad(loss)(pa)
        upd, opt = clone_tx.update(g, opt, pa)
        return optax.apply_updates(pa, upd), opt, l


    return actor, critic, actor_tx, critic_tx, jax.jit(act), jax.jit(update), (clone_tx.init, jax.jit(clone))


class DDPG:
    """Actor mu(s) in [0, 1] (sigmoid), critic Q(s, a); see module doc. ``config``:
    :class:`AgentOptions` (or a ConfigDict of its fields)."""

    def __init__(self, state_dim: int, config, seed: int):
        self.config, self.state_dim = config, int(state_dim)
        (self.actor, self.critic, actor_tx, critic_tx, self._act,
         self._update, self._clone) = _functions(int(state_dim), int(config.hidden), float(config.actor_lr),
                                    float(config.critic_lr))
        ka, kc = jax.random.split(jax.random.key(seed))
        pa = self.actor.init(ka, jnp.zeros((1, state_dim)))
        pc = self.critic.init(kc, jnp.zeros((1, state_dim + 1)))
        self.state = {"actor": pa, "critic": pc, "actor_opt": actor_tx.init(pa),
                      "critic_opt": critic_tx.init(pc)}

    def act(self, state: np.ndarray) -> float:
        """Deterministic policy action in [0, 1] for one state [F]."""
        return float(self._act(self.state["actor"], jnp.asarray(state[None]))[0])

    def imitate(self, states: np.ndarray, actions: np.ndarray, steps: int) -> float:
        """``steps`` behaviour-cloning steps toward ``actions`` [G] in states [G, F] (the
        best allocation so far), so that exploration continues around it; returns the
        final mean squared error."""
        s, a = jnp.asarray(states, jnp.float32), jnp.asarray(np.reshape(actions, (-1, 1)), jnp.float32)
        init, step = self._clone
        pa, opt, loss = self.state["actor"], init(self.state["actor"]), float("nan")
        for _ in range(int(steps)):
            pa, opt, loss = step(pa, opt, s, a)
        self.state = dict(self.state, actor=pa)
        return float(loss)

    def update(self, replay: Replay, rng: np.random.Generator, steps: int) -> tuple[float, float]:
        """``steps`` updates on minibatches from ``replay``; returns the last (critic, actor) losses."""
        lc = la = float("nan")
        for _ in range(steps):
            s, a, r = replay.sample(rng, int(self.config.batch))
            self.state, lc, la = self._update(self.state, jnp.asarray(s), jnp.asarray(a), jnp.asarray(r))
        return float(lc), float(la)


def truncated_normal(rng: np.random.Generator, mean: float, sigma: float, lo: float = 0.0,
                     hi: float = 1.0) -> float:
    """One sample of N(mean, sigma) truncated to [lo, hi] (rejection, then clip)."""
    if sigma <= 0:
        return float(np.clip(mean, lo, hi))
    for _ in range(100):
        x = rng.normal(mean, sigma)
        if lo <= x <= hi:
            return float(x)
    return float(np.clip(mean, lo, hi))


def tree_to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))
