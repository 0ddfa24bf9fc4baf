"""Pruning methods: named compositions of parts (a scorer, an allocator, a compensator,
optionally a training-time regularizer; :mod:`hobs_jax.methods.parts`), one registry of
methods and one per kind of part. Importing this package registers the built-in parts
and methods; R-SPAR's allocator (:mod:`hobs_jax.rspar`) is declared by name and imported
on first use.

    result = prune("hobs", "resnet56", variables, target=0.5, calib=calib)
    register_method("magnitude_obs", scorer="l2", allocators=("uniform", "global"),
                    compensator="obs")                     # a hybrid is one line
"""

from hobs_jax.methods import allocators as _allocators  # noqa: F401  (registers uniform, global; declares rspar)
from hobs_jax.methods import bilevel as _bilevel  # noqa: F401
from hobs_jax.methods import depgraph as _depgraph  # noqa: F401
from hobs_jax.methods import hobs as _hobs  # noqa: F401  (obs parts; hobs, hobs_nohessian, rspar, hybrids)
from hobs_jax.methods import jtp as _jtp  # noqa: F401
from hobs_jax.methods import learned as _learned  # noqa: F401  (learned scorer and allocator)
from hobs_jax.methods import magnitude as _magnitude  # noqa: F401  (l2, l2sq, none; magnitude)
from hobs_jax.methods import structalign as _structalign  # noqa: F401
from hobs_jax.methods import udfc as _udfc  # noqa: F401
from hobs_jax.methods.api import PruneResult, make_task, prune, run
from hobs_jax.methods.base import Calibration, PruneOutcome, PruneTask
from hobs_jax.methods.compose import MethodOptions, MethodSpec
from hobs_jax.methods.obs_groups import group_roles
from hobs_jax.methods.parts import Allocation, Scores, Selection, Trained
from hobs_jax.methods.registry import (
    METHODS,
    PARTS,
    config_sections,
    declare_part,
    get_method,
    get_part,
    list_methods,
    list_parts,
    register_method,
    register_part,
)

__all__ = ["Allocation", "Calibration", "METHODS", "MethodOptions", "MethodSpec", "PARTS", "PruneOutcome",
           "PruneResult", "PruneTask", "Scores", "Selection", "config_sections", "declare_part", "get_method",
           "get_part", "group_roles", "list_methods", "list_parts", "make_task", "prune", "register_method",
           "register_part", "run", "Trained"]
