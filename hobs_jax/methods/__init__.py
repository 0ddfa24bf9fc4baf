"""Pruning methods: one registry, one protocol (:class:`PruneTask` -> :class:`PruneOutcome`),
one file per method. Importing this package registers the built-in methods."""

from hobs_jax.methods.base import Calibration, MethodSpec, PruneOutcome, PruneTask
from hobs_jax.methods.registry import METHODS, config_sections, get_method, list_methods, register
from hobs_jax.methods.api import PruneResult, make_task, prune, run
from hobs_jax.methods import magnitude as _magnitude  # noqa: F401  (registers)

__all__ = ["Calibration", "METHODS", "MethodSpec", "PruneOutcome", "PruneResult", "PruneTask",
           "config_sections", "get_method", "list_methods", "make_task", "prune", "register", "run"]
