"""The plan's tables: Table 1 style, the one-shot comparison, module ablation, H-OBS
sensitivity and stability over seeds, built from sweep rows or run records
(:mod:`~hobs_jax.experiments.tables.catalog` lists the published ones).

    python -m hobs_jax.experiments.tables --list
    python -m hobs_jax.experiments.tables sensitivity_resnet20 stability_resnet20
"""
