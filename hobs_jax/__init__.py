"""hobs_jax: Hessian-based structured pruning (H-OBS), RL sparsity allocation (R-SPAR)
and Block-ELL sparse kernels for JAX/Flax models.

The core library never imports torch; the PyTorch parity layer lives in the separate
``parity`` package.
"""

__version__ = "0.1.0"
