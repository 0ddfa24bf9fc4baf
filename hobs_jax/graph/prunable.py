"""Any Flax model as a :class:`~hobs_jax.models.Prunable`, and its graph with the widths
its rebuild can follow.

    p = prunable(MyNet(), variables, input_shape=(1, 28, 28, 1))   # linen
    p = prunable(my_nnx_net, input_shape=(1, 28, 28, 1))            # NNX (variables: its state)
    p = prunable("resnet50", variables)                             # the zoo
    g = graph_of(p)

:func:`as_prunable` is what every entry point calls on its ``model`` argument: a
Prunable is returned as it is, a zoo name or zoo module goes to the zoo's adapter
(:func:`hobs_jax.models.prunable`), a linen module to
:class:`~hobs_jax.graph.linen_model.LinenModel`, an NNX module to
:class:`~hobs_jax.graph.nnx_model.NNXModel`. Bad input is a one-line ``ValueError``
before anything is built: variables that do not match the module (a missing or
unexpected leaf, a layer whose shapes do not fit), a missing input shape, tied NNX
weights.

**The probe.** :func:`graph_of` traces the network to its channel graph
(:func:`~hobs_jax.graph.trace.trace_module`) and, outside the zoo, checks that the
rebuild follows every prunable group: it rebuilds the network once with every prunable
group at a distinct prime size (shapes only, nothing is computed), traces the rebuilt
network and compares: each group must be found at its anchor with the probed size and
the same members. A group whose width the module's code fixes (``self.param("g", init,
(64,))``, ``x.reshape(b, s, 12, 64)``, a slice at a fixed index) fails that test, or
makes the rebuilt network fail to run; such groups are found by bisection and listed as
not prunable with the layer and the error, so methods never touch them and a plan that
does is refused in one line (:func:`hobs_jax.graph.plan.validate`). The zoo needs no
probe: it is rebuilt from width entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.graph.groups import Atom, Graph, Group, Layout
from hobs_jax.graph.linen_model import LinenModel, attention_layers, fixed_axes, width_updates, wrap
from hobs_jax.graph.trace import _is_zoo, build_graph, trace_module
from hobs_jax.models.prunable import Prunable, prunable as zoo_prunable

ROOTS = {"zoo": 1, "linen": LinenModel.NAME_STACK_ROOTS, "nnx": 1}  # name-stack components before a layer


def label_of(module: Any) -> str:
    """``package.module.Class`` of ``module``'s class."""
    t = type(module)
    return f"{t.__module__}.{t.__qualname__}"


def one_line(e: BaseException) -> str:
    """``Type: first line`` of an exception (Flax's error links dropped)."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    first = first.split(" (https://flax.readthedocs.io")[0]
    return f"{type(e).__name__}: {first}"


def _layer_error(label: str, e: BaseException, what: str) -> ValueError:
    from hobs_jax.graph.nnx_model import failing_layer

    layer = failing_layer(e)
    at = f" at layer {layer}" if layer else ""
    return ValueError(f"{label}: {what}{at}: {one_line(e)}")


def _leaves(tree) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(k, "key", k)) for k in p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _clean(variables: Mapping) -> dict:
    return {k: v for k, v in variables.items() if k != "intermediates"}


def _check_structure(label: str, expected: Mapping, got: Mapping) -> None:
    """One-line error unless ``got`` has exactly the leaves (and ranks) of ``expected``."""
    e, g = _leaves(expected), _leaves(got)
    missing = sorted(set(e) - set(g))
    if missing:
        raise ValueError(f"variables do not match {label}: missing {'/'.join(missing[0])}"
                         + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(g) - set(e))
    if extra:
        raise ValueError(f"variables do not match {label}: unexpected {'/'.join(extra[0])}"
                         + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k in sorted(e):
        if len(np.shape(g[k])) != len(e[k].shape):
            raise ValueError(f"variables do not match {label}: {'/'.join(k)} has shape {tuple(np.shape(g[k]))}, "
                             f"the module makes a rank-{len(e[k].shape)} array {tuple(e[k].shape)}")


def _runs(label: str, module, variables, input_shape, what: str = "does not run on these variables"):
    """Abstract forward pass (eval mode); one-line error naming the layer on failure."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    try:
        return jax.eval_shape(lambda v, x: module.apply(v, x, train=False), _abstract(variables), x)
    except Exception as e:  # any failure of user code: reported in one line with its layer
        raise _layer_error(label, e, what) from None


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def resized(module: nn.Module, variables: Mapping, input_shape) -> bool:
    """Whether some Flax layer of linen ``module`` runs at another width than it was
    constructed with (a rebuilt network)."""
    found = []

    def spy(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and width_updates(context.module, args[0] if args else None):
            found.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    def run(v, x):
        with nn.intercept_methods(spy):
            return module.apply(v, x, train=False)

    jax.eval_shape(run, _abstract(variables), jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return bool(found)


def linen_prunable(module: nn.Module, variables: Mapping, input_shape, *,
                   call_kwargs: Mapping[str, Any] | None = None, check: bool = True) -> Prunable:
    """The :class:`Prunable` of a user's linen ``module`` (see module docstring)."""
    adapter = wrap(module, call_kwargs)
    user = adapter.module
    label = label_of(user)
    if variables is None:
        raise ValueError(f"{label}: variables are required for a linen module")
    if input_shape is None:
        raise ValueError(f"{label}: input_shape is required for a module outside the zoo (e.g. (1, 28, 28, 1))")
    shape = (1,) + tuple(int(d) for d in input_shape[1:])
    variables = _clean(variables)
    fixed: tuple = ()
    if check:
        x = jnp.zeros(shape, jnp.float32)
        try:
            ref = jax.eval_shape(lambda: adapter.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                      x, train=False))
        except Exception as e:
            raise _layer_error(label, e, "cannot be initialized on inputs of shape " + str(shape)) from None
        _check_structure(label, _clean(ref), variables)
        _runs(label, adapter, variables, shape)
        fixed = fixed_axes(attention_layers(adapter, _abstract(variables), jax.ShapeDtypeStruct(shape, jnp.float32)))
    return _linen(adapter, variables, shape, label, fixed)


def _linen(adapter: LinenModel, variables, shape, label, fixed) -> Prunable:
    def rebuild(new_variables: Mapping) -> Prunable:
        return _linen(adapter, _clean(new_variables), shape, label, fixed)

    return Prunable(adapter, variables, shape, rebuild, "linen", None, label, fixed, adapter.module)


def nnx_prunable(module, input_shape, *, call_kwargs: Mapping[str, Any] | None = None,
                 check: bool = True) -> Prunable:
    """The :class:`Prunable` of NNX ``module`` (variables: its state)."""
    from hobs_jax.graph import nnx_model

    label = label_of(module)
    if input_shape is None:
        raise ValueError(f"{label}: input_shape is required for a module outside the zoo (e.g. (1, 28, 28, 1))")
    shape = (1,) + tuple(int(d) for d in input_shape[1:])
    adapter = nnx_model.adapter(module, call_kwargs)
    variables, _ = nnx_model.split_variables(module)
    fixed = ()
    if check:
        _runs(label, adapter, variables, shape, "does not run")
        fixed = fixed_axes(_nnx_attention(module))

    def rebuild(new_variables: Mapping) -> Prunable:
        new = nnx_model.with_arrays(module, new_variables)
        return dataclasses.replace(nnx_prunable(new, shape, call_kwargs=call_kwargs, check=False), fixed=fixed)

    return Prunable(adapter, variables, shape, rebuild, "nnx", None, label, fixed, module)


def _nnx_attention(module) -> list[tuple[str, ...]]:
    from flax import nnx

    from hobs_jax.graph.nnx_model import _spath, _walk

    return [_spath(path) for path, _, _, child in _walk(module) if isinstance(child, nnx.MultiHeadAttention)]


def as_prunable(model: Any, variables: Mapping | None = None, input_shape=None, *,
                call_kwargs: Mapping[str, Any] | None = None) -> Prunable:
    """``model`` as a :class:`Prunable`: a Prunable (``input_shape`` may override its
    input), a ``(module, variables)`` pair, a zoo name or module, a linen or an NNX
    module."""
    if isinstance(model, Prunable):
        if input_shape is not None and tuple(input_shape[1:]) != tuple(model.input_shape[1:]):
            return dataclasses.replace(model, input_shape=(1,) + tuple(input_shape[1:]))
        return model
    if isinstance(model, tuple) and len(model) == 2 and variables is None:
        model, variables = model
    if isinstance(model, Prunable):
        return as_prunable(model.with_variables(variables), None, input_shape)
    if _is_zoo(model, None):
        return zoo_prunable(model, variables, input_shape)
    from flax import nnx

    from hobs_jax.graph.nnx_model import NNXModel

    if isinstance(model, NNXModel):
        raise ValueError("this is the adapter an NNX module runs through: pass the NNX module itself "
                         "(PruneResult.nnx, Prunable.to_nnx()) or its Prunable (PruneResult.prunable)")
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError(f"{label_of(model)}: an NNX module holds its own variables; pass the module alone")
        return nnx_prunable(model, input_shape, call_kwargs=call_kwargs)
    if isinstance(model, nn.Module):
        return linen_prunable(model, variables, input_shape, call_kwargs=call_kwargs)
    raise ValueError(f"cannot prune a {type(model).__name__}: pass a zoo name, a flax.linen or flax.nnx module, "
                     f"a (module, variables) pair or a hobs_jax.models.Prunable")


prunable = as_prunable


# -- the graph and the probe --------------------------------------------------------

def graph_of(p: Prunable, *, strict: bool = False, probe: bool = True, dtype=jnp.float32) -> Graph:
    """The channel graph of ``p`` (module docstring: outside the zoo, groups the rebuild
    cannot follow are listed as not prunable, naming the layer)."""
    if p.kind == "zoo":
        return build_graph(p, strict=strict, dtype=dtype)
    g = trace_module(p.module, p.variables, p.input_shape, label=p.label, fixed=p.fixed, roots=ROOTS[p.kind],
                     dtype=dtype, apply_kwargs={"train": False})
    if probe:
        g = _probe(p, g, dtype)
    if strict:
        for grp in g.groups:
            if grp.reason.startswith("unsupported primitive"):
                raise ValueError(f"group {grp.id} ({grp.size} channels at {grp.members[0].name} axis "
                                 f"{grp.members[0].axis}): {grp.reason}")
    return g


def layout_size(node: Layout, sizes: Mapping[int, int]) -> int:
    """Size of ``node`` with group ``g`` at ``sizes[g]`` (others at their size)."""
    if isinstance(node, Atom):
        return int(sizes.get(node.group, node.size)) if node.group is not None else node.size
    parts = [layout_size(q, sizes) for q in node.parts]
    return int(np.prod(parts)) if node.kind == "prod" else int(sum(parts))


def resized_shapes(graph: Graph, variables: Mapping, sizes: Mapping[int, int]) -> dict:
    """``jax.ShapeDtypeStruct`` variables with group ``g`` at ``sizes[g]`` channels."""
    by_leaf: dict[tuple, list] = {}
    for va in graph.axes:
        by_leaf.setdefault((va.collection,) + va.path, []).append(va)

    def one(path, leaf):
        key = tuple(str(getattr(k, "key", k)) for k in path)
        shape = list(np.shape(leaf))
        for va in by_leaf.get(key, ()):
            shape[va.axis] = layout_size(va.layout, sizes)
        return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, variables)


def _primes(count: int) -> list[int]:
    from hobs_jax.models.registry import primes_from

    return primes_from(211, count)


def _members(g: Group) -> tuple:
    return tuple(sorted((m.collection, m.path, m.axis) for m in g.members))


def _trial(p: Prunable, g: Graph, groups: Sequence[Group], dtype) -> dict[int, str]:
    """Rebuild with ``groups`` at distinct prime sizes; the groups that did not follow,
    with why. Raises what the rebuilt network raised."""
    sizes = dict(zip((grp.id for grp in groups), _primes(len(groups))))
    shapes = resized_shapes(g, p.variables, sizes)
    q = p.rebuild(shapes)
    pg = trace_module(q.module, shapes, p.input_shape, label=p.label, fixed=q.fixed, roots=ROOTS[p.kind],
                      dtype=dtype, apply_kwargs={"train": False})
    bad = {}
    for grp in groups:
        h = pg.find_anchor(grp.anchor)
        if h is None or h.size != sizes[grp.id] or _members(h) != _members(grp):
            found = "nothing" if h is None else f"{h.size} channels" + (
                "" if _members(h) == _members(grp) else " with other members")
            bad[grp.id] = (f"the module's code does not follow this width (rebuilt with {sizes[grp.id]} channels, "
                           f"its graph has {found} at {grp.members[0].name} axis {grp.members[0].axis})")
    return bad


def _find_unfollowable(p: Prunable, g: Graph, groups: list[Group], dtype) -> dict[int, str]:
    try:
        return _trial(p, g, groups, dtype)
    except Exception as e:  # the rebuilt network failed: find which groups cause it
        why = str(_layer_error(p.label, e, "rebuilt at other widths fails")).split(": ", 1)[1]
        if len(groups) == 1:
            return {groups[0].id: why}
        half = len(groups) // 2
        bad = _find_unfollowable(p, g, groups[:half], dtype)
        bad.update(_find_unfollowable(p, g, groups[half:], dtype))
        if not bad:  # only some combination fails: none of these can be trusted
            bad = {grp.id: why for grp in groups}
        return bad


def _probe(p: Prunable, g: Graph, dtype) -> Graph:
    groups = list(g.prunable)
    if not groups:
        return g
    bad = _find_unfollowable(p, g, groups, dtype)
    rest = [grp for grp in groups if grp.id not in bad]
    while bad and rest:  # the survivors must also follow together
        more = _find_unfollowable(p, g, rest, dtype)
        if not more:
            break
        bad.update(more)
        rest = [grp for grp in rest if grp.id not in more]
    if not bad:
        return g
    return g.with_groups([dataclasses.replace(grp, prunable=False, reason=f"not followable: {bad[grp.id]}")
                          if grp.id in bad else grp for grp in g.groups])
