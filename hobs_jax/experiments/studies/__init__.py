"""Measurements behind the benchmark scripts (``benchmarks/*.py`` are their command lines):
each study measures rows, names their source (:func:`hobs_jax.experiments.records.source_here`)
and builds its :class:`~hobs_jax.experiments.table.ResultTable`; ``from_legacy`` converts
the record an earlier script wrote, keeping its provenance."""
