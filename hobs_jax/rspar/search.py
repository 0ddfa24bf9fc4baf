"""The R-SPAR search loop: warm-up episodes at random, then DDPG episodes with decaying
exploration; the best allocation (by reward) is tracked; the whole search state (agent
parameters and optimizer states, replay buffer, numpy RNG, noise, baseline, best so far,
learning curve) is checkpointed with orbax every ``checkpoint_every`` episodes, so an
interrupted search resumes where it stopped and ends exactly as an uninterrupted one.

Reference allocations (H-OBS uniform and global) may be evaluated first: they enter the
learning curve and the replay buffer as demonstrations, and the best-so-far starts from
the better of them, so the search returns an allocation at least as good as both *under
the reward* (whether that carries over to test accuracy is what the experiment measures).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Mapping

import jax
import numpy as np

from hobs_jax import faults, interrupt
from hobs_jax.rspar.agent import DDPG, Replay, truncated_normal
from hobs_jax.rspar.env import AllocationEnv, Episode


@dataclasses.dataclass
class SearchResult:
    """best_keep [G] kept counts, best_index [G] grid indices, best_reward, best_loss,
    best_acc (reward split), best_source ('episode N' or a reference name), curve (one
    dict per episode), references {name: {reward, loss, acc}}, episodes, seconds (this
    call's wall time), seconds_per_episode, top (the ``keep_top`` best distinct agent
    allocations, best first: dicts with source, reward, loss, acc, keep, index)."""

    best_keep: np.ndarray
    best_index: np.ndarray
    best_reward: float
    best_loss: float
    best_acc: float
    best_source: str
    curve: list
    references: dict
    episodes: int
    seconds: float
    seconds_per_episode: float
    top: list = dataclasses.field(default_factory=list)


def _flat_leaves(tree) -> dict:
    return {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(jax.device_get(tree)))}


class _Checkpoint:
    """``workdir/episode_<n>/{tree (orbax), meta.json}``; keeps the newest two."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)

    def latest(self) -> str | None:
        done = []
        for name in os.listdir(self.workdir):
            d = os.path.join(self.workdir, name)
            if name.startswith("episode_") and os.path.exists(os.path.join(d, "meta.json")):
                done.append((int(name.split("_")[1]), d))
        return max(done)[1] if done else None

    def save(self, episode: int, tree: dict, meta: dict) -> None:
        import orbax.checkpoint as ocp

        d = os.path.join(self.workdir, f"episode_{episode:06d}")
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        with ocp.PyTreeCheckpointer() as ck:
            ck.save(os.path.join(d, "tree"), tree)
        tmp = os.path.join(d, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(d, "meta.json"))  # meta.json last: marks the step complete
        old = sorted(n for n in os.listdir(self.workdir) if n.startswith("episode_"))[:-2]
        for n in old:
            shutil.rmtree(os.path.join(self.workdir, n), ignore_errors=True)

    def load(self, d: str) -> tuple[dict, dict]:
        import orbax.checkpoint as ocp

        with ocp.PyTreeCheckpointer() as ck:
            tree = ck.restore(os.path.join(d, "tree"))
        with open(os.path.join(d, "meta.json")) as f:
            return tree, json.load(f)


def _to_unit(keep: np.ndarray, sizes: np.ndarray, lbound: float) -> np.ndarray:
    """Kept counts -> actor-space actions in [0, 1] (ratio = lbound + (1 - lbound) u)."""
    r = keep / sizes
    return np.clip((r - lbound) / max(1.0 - lbound, 1e-12), 0.0, 1.0).astype(np.float32)


@interrupt.deferring_signals  # SIGTERM/SIGINT end the current episode, then save and stop
def search(env: AllocationEnv, reward_fn: Callable[[np.ndarray], tuple[float, float]], *,
           episodes: int, warmup: int, seed: int, agent_config,
           references: Mapping[str, np.ndarray] | None = None, cost_weight: float = 0.0,
           workdir: str | None = None, checkpoint_every: int = 25, stop_after: int | None = None,
           keep_top: int = 0, progress: bool = True) -> SearchResult:
    """Run (or resume) a search of ``episodes`` episodes (module doc).

    Args:
      env: the environment; ``reward_fn(index [G]) -> (loss, acc)`` the fast reward.
      agent_config: :class:`~hobs_jax.rspar.agent.AgentOptions` (or a ConfigDict of its fields).
      warmup: episodes with uniformly random actions before the agent acts and learns.
      references: name -> [G] kept counts evaluated before the first episode.
      cost_weight: reward = -loss - cost_weight * budget ratio.
      workdir: checkpoint directory (None: no checkpoints).
      stop_after: return after this many episodes in this call (tests interrupt with it).
      keep_top: also track the best ``keep_top`` distinct allocations the agent's episodes
        (warm-up included, references excluded) reached, for a re-rank on other images
        (:mod:`hobs_jax.rspar.rerank`); ties keep the earlier episode. Checkpointed.
    """
    from hobs_jax.train import progress as bar

    if episodes < 1 or warmup < 0:
        raise ValueError(f"episodes={episodes!r} must be >= 1 and warmup={warmup!r} >= 0")
    t_start = time.perf_counter()
    cfg = agent_config
    agent = DDPG(env.state_dim, cfg, seed)
    replay = Replay(int(cfg.replay), env.state_dim)
    rng = np.random.default_rng(seed)
    st = {"episode": 0, "sigma": float(cfg.noise), "baseline": None, "best": None, "curve": [],
          "references": {}, "seconds": 0.0, "top": []}
    ckpt = _Checkpoint(workdir) if workdir else None
    latest = ckpt.latest() if ckpt else None
    if latest:
        tree, meta = ckpt.load(latest)
        leaves, treedef = jax.tree.flatten(agent.state)
        agent.state = jax.tree.unflatten(treedef, [np.asarray(tree["agent"][str(i)]) for i in range(len(leaves))])
        replay.states, replay.actions = np.array(tree["replay"]["states"]), np.array(tree["replay"]["actions"])
        replay.rewards = np.array(tree["replay"]["rewards"])
        replay.size, replay.pos = int(meta["replay_size"]), int(meta["replay_pos"])
        rng.bit_generator.state = meta["rng"]
        st = meta["state"]
        st.setdefault("top", [])  # checkpoints written before keep_top existed

    def record(ep: Episode, loss: float, acc: float, actions_unit: np.ndarray, source: str) -> float:
        r = -loss - cost_weight * ep.ratio
        b = st["baseline"]
        st["baseline"] = r if b is None else float(cfg.baseline_decay) * b + (1 - float(cfg.baseline_decay)) * r
        replay.add(ep.states, actions_unit, r - st["baseline"])
        if st["best"] is None or r > st["best"]["reward"]:
            st["best"] = {"reward": r, "loss": loss, "acc": acc, "keep": ep.keep.tolist(),
                          "index": ep.index.tolist(), "source": source,
                          "states": np.asarray(ep.states).tolist(), "actions": actions_unit.tolist()}
        if keep_top > 0 and source.startswith("episode"):
            _push_top(st["top"], {"source": source, "reward": r, "loss": loss, "acc": acc,
                                  "keep": ep.keep.tolist(), "index": ep.index.tolist()}, int(keep_top))
        return r

    def save():
        if ckpt is None:
            return
        tree = {"agent": _flat_leaves(agent.state),
                "replay": {"states": replay.states, "actions": replay.actions, "rewards": replay.rewards}}
        meta = {"state": st, "rng": rng.bit_generator.state, "replay_size": replay.size,
                "replay_pos": replay.pos}
        ckpt.save(st["episode"], tree, json.loads(json.dumps(meta, default=_jsonable)))

    if st["episode"] == 0 and not st["references"] and references:
        for name, keep in references.items():
            keep = np.asarray(keep, np.float64)
            ep = env.rollout(lambda s, t: keep[t] / env.sizes[t])
            index = env.snap(keep)
            ep = Episode(ep.states, ep.actions, index, keep, env.budget.ratio(keep))
            loss, acc = reward_fn(index)
            r = record(ep, loss, acc, _to_unit(keep, env.sizes, env.lbound), name)
            st["references"][name] = {"reward": r, "loss": loss, "acc": acc, "ratio": ep.ratio,
                                      "keep": keep.tolist()}
    done_here = 0
    updates = int(cfg.updates) or env.G
    pbar = bar(range(st["episode"], episodes), desc="R-SPAR search", unit="episode", enabled=progress,
               total=episodes, initial=st["episode"])
    for e in pbar:
        faults.point("rspar.episode", e)
        if interrupt.requested():  # SIGTERM/SIGINT: keep the finished episodes, then stop
            if ckpt and st["episode"] % max(1, int(checkpoint_every)):
                save()
            interrupt.check(f"in the R-SPAR search before episode {e} of {episodes}"
                            + (" (search checkpoint saved)" if ckpt else ""))
        t0 = time.perf_counter()
        if e == warmup and int(getattr(cfg, "imitate", 0)):
            agent.imitate(np.asarray(st["best"]["states"]), np.asarray(st["best"]["actions"]), int(cfg.imitate))
        if e < warmup:
            act = lambda s, t: env.lbound + (1 - env.lbound) * float(rng.uniform())
        else:
            sigma = st["sigma"]
            act = lambda s, t: env.lbound + (1 - env.lbound) * truncated_normal(rng, agent.act(s), sigma)
        ep = env.rollout(act)
        loss, acc = reward_fn(ep.index)
        r = record(ep, loss, acc, _to_unit(ep.keep, env.sizes, env.lbound), f"episode {e}")
        lc = la = None
        if e >= warmup:
            st["sigma"] *= float(cfg.noise_decay)
            lc, la = agent.update(replay, rng, updates)
        st["episode"] = e + 1
        st["seconds"] += time.perf_counter() - t0
        st["curve"].append({"episode": e, "reward": r, "loss": loss, "acc": acc, "ratio": ep.ratio,
                            "sigma": st["sigma"] if e >= warmup else None, "warmup": e < warmup,
                            "critic_loss": lc, "best_reward": st["best"]["reward"]})
        if hasattr(pbar, "set_postfix"):
            pbar.set_postfix(reward=f"{r:.4f}", best=f"{st['best']['reward']:.4f}")
        done_here += 1
        if ckpt and (st["episode"] % max(1, int(checkpoint_every)) == 0 or st["episode"] == episodes):
            save()
        if stop_after is not None and done_here >= stop_after:
            if ckpt and st["episode"] % max(1, int(checkpoint_every)):
                save()
            break
    b = st["best"]
    n_ep = len(st["curve"])
    return SearchResult(np.asarray(b["keep"]), np.asarray(b["index"], np.int64), b["reward"], b["loss"], b["acc"],
                        b["source"], st["curve"], st["references"], st["episode"],
                        time.perf_counter() - t_start, st["seconds"] / max(n_ep, 1),
                        [dict(t) for t in st["top"]])


def _push_top(top: list, entry: dict, k: int) -> None:
    """Insert ``entry`` into ``top`` (best reward first, at most ``k``, one entry per
    distinct allocation); a later equal reward ranks after an earlier one (stable sort)."""
    if any(t["index"] == entry["index"] for t in top):
        return  # the same allocation again: the reward is the same deterministic forward
    top.append(entry)
    top.sort(key=lambda t: -t["reward"])
    del top[k:]


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))
