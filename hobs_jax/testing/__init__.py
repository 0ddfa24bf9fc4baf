"""Networks outside the zoo, written the way users write them (hard-coded widths, no
width fields), for the tests and examples of pruning any Flax model:
:mod:`hobs_jax.testing.nets` (linen) and :mod:`hobs_jax.testing.nnx_nets` (NNX)."""
