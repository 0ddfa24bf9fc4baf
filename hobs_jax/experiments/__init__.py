"""Experiments as library code: the machine record, result tables, sweeps over the
pipeline, the plan's tables, the setup validator and the README's figures.

    from hobs_jax.experiments import Sweep, run_sweep, ResultTable
    rows = run_sweep(Sweep("demo", models=("resnet20",), variants=("hobs", "magnitude"),
                           targets=(0.5,), workdir="runs/exp"))

Modules: :mod:`~hobs_jax.experiments.machine` (one machine record), :mod:`~.table`
(ResultTable: JSON, Markdown, LaTeX; context and iso-MACs rules; schema version),
:mod:`~.sweep` (rows as pipeline runs, cached), :mod:`~.records` (run records of earlier
code converted, with their provenance), :mod:`~.tables` (Table 1, ablation, sensitivity,
stability), :mod:`~.validate` (``python -m hobs_jax.validate``), :mod:`~.readme` (README
figures rendered from docs/results/*.json), :mod:`~.isolate` (a call in a fresh process),
:mod:`~.ast_fmnist` and :mod:`~.ast_report` (the AST sweep on Fashion-MNIST, ``python -m``).
"""

from hobs_jax.experiments.sweep import Row, Sweep, Variant, model_of, parse_variant, plan, run_sweep
from hobs_jax.experiments.table import Column, Goal, ResultTable

__all__ = ["Column", "Goal", "ResultTable", "Row", "Sweep", "Variant", "model_of", "parse_variant", "plan",
           "run_sweep"]
