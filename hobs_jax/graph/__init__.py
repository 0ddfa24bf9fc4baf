"""Channel dependency graph from the jaxpr, pruning plans and physical surgery.

>>> g = build_graph("resnet50")                     # groups of coupled channel axes
>>> plan = random_plan(g, seed=0)                    # or plan_from_scores(g, scores, 0.5)
>>> model, variables = apply_plan("resnet50", variables, plan, graph=g)

Any linen or NNX module works the same way through its ``Prunable``:

>>> p = prunable(MyNet(), variables, input_shape=(1, 28, 28, 1))
>>> g = graph_of(p)                                  # groups its rebuild can follow
>>> small = apply_plan(p, plan_from_scores(g, group_l2_scores(g, p.variables), 0.5))

Reference: DepGraph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023).
See docs/graph.md for the rules and how this compares with DepGraph.
"""

from hobs_jax.graph.groups import (Atom, Composite, Graph, Group, IndexMap, Layout, Member, OpCost, VarAxis,
                                   layout_channels, layout_groups, layout_indices)
from hobs_jax.graph.norms import group_l2_scores
from hobs_jax.graph.plan import (PrunePlan, compose, empty_plan, make_plan, plan_from_scores, random_plan,
                                 round_keep, validate)
from hobs_jax.graph.surgery import apply_plan, mask_variables, slice_variables, zoo_name
from hobs_jax.graph.trace import build_graph
from hobs_jax.graph.prunable import as_prunable, graph_of, prunable

__all__ = ["Atom", "Composite", "Graph", "Group", "IndexMap", "Layout", "Member", "OpCost", "PrunePlan",
           "VarAxis", "apply_plan", "as_prunable", "build_graph", "graph_of", "prunable", "compose", "empty_plan", "group_l2_scores", "layout_channels",
           "layout_groups", "layout_indices", "make_plan", "mask_variables", "plan_from_scores",
           "random_plan", "round_keep", "slice_variables", "validate", "zoo_name"]
