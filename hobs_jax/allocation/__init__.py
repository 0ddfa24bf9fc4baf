"""Shared allocation machinery: exact cost models and target searches (uniform and
global-threshold), width alignment (``alignment``: the quantum a runtime wants, from
measured latency staircases), used by every pruning method (R-SPAR adds a learned
allocation)."""

from hobs_jax.allocation import alignment
from hobs_jax.allocation.alignment import quantum_for
from hobs_jax.allocation.cost import CostModel, build_cost_model
from hobs_jax.allocation.search import (TOLERANCE, check_reachable, floors, global_threshold,
                                        normalize, repair, uniform)

__all__ = ["TOLERANCE", "alignment", "quantum_for", "CostModel", "build_cost_model", "check_reachable", "floors",
           "global_threshold", "normalize", "repair", "uniform"]
