"""Analyses of trained and pruned networks (pruning sensitivity: ``python -m
hobs_jax.analysis.sensitivity``)."""
