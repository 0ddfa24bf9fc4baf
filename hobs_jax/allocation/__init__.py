"""Shared allocation machinery: exact cost models and target searches (uniform and
global-threshold), width alignment (``alignment``: the quantum a runtime wants, from
measured latency staircases), latency budgets (``latency``: per-layer tables measured in
XLA or ONNX Runtime, cached per model and device), used by every pruning method (R-SPAR
adds a learned allocation)."""

from hobs_jax.allocation import alignment, latency
from hobs_jax.allocation.alignment import quantum_for
from hobs_jax.allocation.cost import CostModel, build_cost_model
from hobs_jax.allocation.search import (
    TOLERANCE,
    Allocation,
    Unreachable,
    check_reachable,
    floors,
    global_keep,
    global_threshold,
    normalize,
    normalize_finite,
    reachable_quantum,
    repair,
    restrict,
    uniform,
)

__all__ = ["TOLERANCE", "Allocation", "CostModel", "Unreachable", "alignment", "build_cost_model", "latency",
           "check_reachable", "floors", "global_keep", "global_threshold", "normalize", "normalize_finite",
           "quantum_for", "reachable_quantum", "repair", "restrict", "uniform"]
