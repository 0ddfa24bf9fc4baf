"""Pruning methods: one registry, one protocol (:class:`PruneTask` -> :class:`PruneOutcome`),
one file per method. Importing this package registers the built-in methods."""

from hobs_jax.methods.base import Calibration, MethodSpec, PruneOutcome, PruneTask
from hobs_jax.methods.registry import METHODS, config_sections, get_method, list_methods, register
from hobs_jax.methods.api import PruneResult, make_task, prune, run
from hobs_jax.methods import magnitude as _magnitude  # noqa: F401  (registers)
from hobs_jax.methods import hobs as _hobs  # noqa: F401  (registers hobs, hobs_nohessian)
from hobs_jax.methods import depgraph as _depgraph  # noqa: F401
from hobs_jax.methods import udfc as _udfc  # noqa: F401

__all__ = ["Calibration", "METHODS", "MethodSpec", "PruneOutcome", "PruneResult", "PruneTask",
           "config_sections", "get_method", "list_methods", "make_task", "prune", "register", "run"]
from hobs_jax.rspar import method as _rspar  # noqa: F401,E402  (registers rspar: R-SPAR + H-OBS)
