"""Channel dependency graph from the jaxpr, pruning plans and physical surgery."""

from hobs_jax.graph.groups import Atom, Composite, Graph, Group, IndexMap, Member, VarAxis
from hobs_jax.graph.trace import build_graph

__all__ = ["Atom", "Composite", "Graph", "Group", "IndexMap", "Member", "VarAxis", "build_graph"]
