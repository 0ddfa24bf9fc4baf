"""R-SPAR: reinforcement-learned per-group sparsity allocation, an allocator part.

An AMC-style DDPG agent (He et al., ECCV 2018) picks a keep ratio per channel group
under a MACs, params or measured-latency budget (:mod:`env`); each episode's reward is
the loss of the compensated network on held-out calibration images, one jitted forward
of a masked full-size network built from precomputed per-group compensations
(:mod:`reward`); :mod:`search` runs, checkpoints and resumes the search; :mod:`rerank`
re-evaluates the search's best few allocations and the uniform and global ones on the
larger non-held-out split; :mod:`allocator` is the allocator part
(:class:`hobs_jax.methods.parts.Allocator`) the methods ``rspar`` (H-OBS scorer and
compensator around it) and ``magnitude_rspar`` use. See docs/rspar.md.
"""

from hobs_jax.rspar.agent import DDPG, AgentOptions, Replay
from hobs_jax.rspar.allocator import RsparAllocator, RsparOptions, make_budget, search_allocation
from hobs_jax.rspar.env import AllocationEnv, AsCost, Episode, MonomialBudget, check_lbound, kept_grid
from hobs_jax.rspar.report import allocation_record, save_allocation, save_learning_curve
from hobs_jax.rspar.rerank import Candidate, candidates, pick, rerank
from hobs_jax.rspar.reward import GridReward, build_grid_reward, compensation_stacks
from hobs_jax.rspar.search import SearchResult, search

__all__ = ["AgentOptions", "AllocationEnv", "AsCost", "Candidate", "DDPG", "Episode", "GridReward", "MonomialBudget",
           "Replay", "RsparAllocator", "RsparOptions", "SearchResult", "allocation_record", "build_grid_reward",
           "candidates", "check_lbound", "compensation_stacks", "kept_grid", "make_budget", "pick", "rerank",
           "save_allocation", "save_learning_curve", "search", "search_allocation"]
