"""Calibration statistics: BatchNorm re-estimation (and, with H-OBS, layer Hessians)."""

from hobs_jax.stats.bn import reestimate as reestimate_bn
from hobs_jax.stats.hessian import HessianStats, LayerStats, collect_hessians, dampen
from hobs_jax.stats.layers import LayerInfo, trace_layers

__all__ = ["HessianStats", "LayerInfo", "LayerStats", "collect_hessians", "dampen", "reestimate_bn",
           "trace_layers"]
