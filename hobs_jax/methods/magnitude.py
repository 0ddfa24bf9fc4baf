"""``magnitude``: group L2 norm importance (Torch-Pruning's GroupMagnitudeImportance with
p=2, DepGraph Sec. 3.3 without sparse training), uniform or global allocation, no data,
no compensation. The baseline every other method must beat.

Parts defined here: the ``l2`` scorer (the group L2 norm of each channel over every
member slice, :func:`hobs_jax.graph.group_l2_scores`), the ``l2sq`` scorer (half its
square: the OBS loss with H = I, H-OBS's "w/o Hessian" ablation), and the ``none``
compensator (the plan slices the input variables as they are).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hobs_jax import obs
from hobs_jax.graph import group_l2_scores
from hobs_jax.methods.parts import Scores, Selection
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.options import Options


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """A part without options."""


class L2:
    """Per channel, the L2 norm of its slices in every member of its group."""

    name = "l2"
    Options = NoOptions
    needs_data = False

    def score(self, sel: Selection, options: NoOptions) -> Scores:
        return Scores.from_importance(group_l2_scores(sel.task.graph, sel.task.variables))

    def report(self, sel, keep, options) -> dict:
        return {}


class HalfSquaredL2(L2):
    """``1/2 ||group slices of c||^2``: the OBS saliency with H = I summed over members."""

    name = "l2sq"

    def score(self, sel: Selection, options: NoOptions) -> Scores:
        l2 = group_l2_scores(sel.task.graph, sel.task.variables)
        return Scores.from_importance({g: 0.5 * s ** 2 for g, s in l2.items()})


class NoCompensation:
    """The input variables, unchanged; for an allocator's grid, removed rows (or the
    producers' columns of a group nobody reads) are zeroed."""

    name = "none"
    Options = NoOptions
    needs_data = False

    def groups(self, sel: Selection, options: NoOptions):
        return None

    def compensate(self, sel: Selection, plan, removed, options: NoOptions):
        return sel.task.variables, {}

    def grid(self, sel: Selection, gid: int, order: np.ndarray, counts: np.ndarray, options: NoOptions) -> dict:
        flat = sel.shared("flat", lambda: obs.flat_variables(sel.task.variables))
        return obs.group_grid(sel.channel_groups()[gid], order, counts, flat, compensate_rows=False)


register_part("scorer", L2())
register_part("scorer", HalfSquaredL2())
register_part("compensator", NoCompensation())

register_method("magnitude", scorer="l2", allocators=("uniform", "global"), compensator="none",
                defaults=dict(normalize="mean"),
                summary="group L2 norm, uniform/global allocation, no compensation")
