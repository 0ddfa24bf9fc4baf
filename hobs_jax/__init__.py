"""hobs_jax: Hessian-based structured pruning (H-OBS), RL sparsity allocation (R-SPAR)
and Block-ELL sparse kernels for JAX/Flax models.

The core library never imports torch; the PyTorch parity layer lives in the separate
``parity`` package.
"""

__version__ = "0.1.0"


def load(path):
    """``(model, variables, meta)`` from a checkpoint written by
    :func:`hobs_jax.export.save` (imported on first use, so ``import hobs_jax`` stays
    light)."""
    from hobs_jax.export import load as _load

    return _load(path)
