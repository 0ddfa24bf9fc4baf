"""The public OBS engine: layer Hessians and their inverses, greedy removal paths with
downdates, compensation, the sequential refit, R-SPAR's precomputed grids, the block OBS
for Block-ELL, and a timing hook. H-OBS and R-SPAR (through their parts in
:mod:`hobs_jax.methods`), the sensitivity analysis and the benchmarks all call it.

Modules (docs/hobs.md, "The OBS engine"):

* :mod:`~hobs_jax.obs.linalg` - saliency, compensation and downdate of one layer's
  rows (:class:`Consumer`, :func:`greedy_path`, :func:`compensate`) and the shared
  safeguards (:func:`dampen`, dead inputs, :func:`robust_inverse`, :func:`blas_threads`).
* :mod:`~hobs_jax.obs.layers` - channel groups as rows/columns of layers
  (:class:`ChannelGroup`), per-layer Hessians solved once (:class:`SolvedLayers`).
* :mod:`~hobs_jax.obs.channel` - channel OBS over a group: :func:`select`,
  :func:`compensate_layers`, :func:`group_grid`.
* :mod:`~hobs_jax.obs.refit` - :func:`refit_sequential` (H-OBS's propagation).
* :mod:`~hobs_jax.obs.block` - block OBS for balanced Block-ELL.
* :mod:`~hobs_jax.obs.timing` - :class:`Timer` and :func:`listen` (the timing hook).

The layer Hessians themselves are streamed by :func:`hobs_jax.stats.collect_hessians`
(re-exported here as :func:`layer_hessians`).
"""

from hobs_jax.obs.channel import (
    compensate_layers,
    consumers,
    group_grid,
    group_kept_rows,
    kept_channel_masks,
    removed_at,
    removed_rows,
    select,
)
from hobs_jax.obs.layers import (
    ChannelGroup,
    Site,
    SolvedLayers,
    bn_weights,
    column_weights,
    copy_tree,
    flat_variables,
    layer_weights,
    set_leaf,
)
from hobs_jax.obs.linalg import (
    Consumer,
    blas_threads,
    channel_rows,
    compensate,
    dampen,
    greedy_path,
    path_scores,
    rank_scores,
    reconstruction_error,
    robust_inverse,
    single_removal,
    subtract_product,
)
from hobs_jax.obs.refit import refit_sequential, solve_refit
from hobs_jax.obs.timing import PhaseListener, Timer, listen
from hobs_jax.stats.hessian import HessianStats, check_images
from hobs_jax.stats.hessian import collect_hessians as layer_hessians

__all__ = ["ChannelGroup", "Consumer", "HessianStats", "PhaseListener", "Site", "SolvedLayers", "Timer",
           "blas_threads", "bn_weights", "channel_rows", "check_images", "column_weights", "compensate",
           "compensate_layers", "consumers", "copy_tree", "dampen", "flat_variables", "greedy_path", "group_grid",
           "group_kept_rows", "kept_channel_masks",
           "layer_hessians", "layer_weights", "listen", "path_scores", "rank_scores", "reconstruction_error",
           "refit_sequential", "removed_at", "removed_rows", "robust_inverse", "select", "set_leaf",
           "single_removal", "solve_refit", "subtract_product"]
