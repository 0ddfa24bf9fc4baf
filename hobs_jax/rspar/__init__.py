"""R-SPAR: reinforcement-learned per-group sparsity allocation with H-OBS rewards.

An AMC-style DDPG agent (He et al., ECCV 2018) picks a keep ratio per channel group
under a MACs, params or measured-latency budget (:mod:`env`); each episode's reward is
the loss of the H-OBS-compensated network on held-out calibration images, one jitted
forward of a masked full-size network built from precomputed per-group compensations
(:mod:`reward`); :mod:`search` runs, checkpoints and resumes the search; :mod:`rerank`
re-evaluates the search's best few allocations and H-OBS's uniform and global ones on the
larger Hessian calibration split; the registered method ``rspar`` (:mod:`method`) hands
the winner to H-OBS. See docs/rspar.md.
"""

import hobs_jax.methods  # noqa: F401  (first: it registers rspar, whose modules import hobs)
from hobs_jax.rspar.agent import DDPG, Replay
from hobs_jax.rspar.env import AllocationEnv, Episode, MonomialBudget, check_lbound, kept_grid
from hobs_jax.rspar.rerank import Candidate, candidates, pick, rerank
from hobs_jax.rspar.report import allocation_record, save_allocation, save_learning_curve
from hobs_jax.rspar.reward import GridReward, build_grid_reward, compensation_stacks
from hobs_jax.rspar.search import SearchResult, search

__all__ = ["AllocationEnv", "Candidate", "DDPG", "Episode", "GridReward", "MonomialBudget", "Replay", "SearchResult",
           "allocation_record", "build_grid_reward", "candidates", "check_lbound", "compensation_stacks",
           "kept_grid", "pick", "rerank", "save_allocation", "save_learning_curve", "search"]
