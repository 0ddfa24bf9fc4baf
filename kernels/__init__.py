"""Block-ELL sparse format and SpMM kernels (Pallas, jax-triton, XLA fallback). Depends on jax only."""
