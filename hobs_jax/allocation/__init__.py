"""Shared allocation machinery: exact cost models and target searches (uniform and
global-threshold), used by every pruning method (R-SPAR adds a learned allocation)."""

from hobs_jax.allocation.cost import CostModel, build_cost_model
from hobs_jax.allocation.search import (TOLERANCE, Allocation, Unreachable, check_reachable, floors, global_keep,
                                        global_threshold, normalize, normalize_finite, repair, restrict, uniform)

__all__ = ["TOLERANCE", "Allocation", "CostModel", "Unreachable", "build_cost_model", "check_reachable", "floors",
           "global_keep", "global_threshold", "normalize", "normalize_finite", "repair", "restrict", "uniform"]
