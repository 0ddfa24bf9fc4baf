"""Experiments: sweeps over the training engine and the pipeline whose results go to
docs/results (one module per experiment, each runnable with ``python -m``)."""
