"""Calibration statistics: BatchNorm re-estimation (and, with H-OBS, layer Hessians)."""

from hobs_jax.stats.bn import reestimate as reestimate_bn

__all__ = ["reestimate_bn"]
