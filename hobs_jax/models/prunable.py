"""``Prunable``: a network as the pruning machinery sees it, and the zoo's adapter to it.

A :class:`Prunable` holds what every entry point needs and nothing about pruning:

* ``module`` - something with Flax's ``apply(variables, x, train=..., mutable=...)``:
  a zoo module, or an adapter running a user's linen or NNX module
  (:mod:`hobs_jax.graph.linen_model`, :mod:`hobs_jax.graph.nnx_model`);
* ``variables`` - ``{"params": ..., "batch_stats"?: ...}`` (host or device arrays, or
  ``jax.ShapeDtypeStruct`` for shape-only work);
* ``input_shape`` - one example, batch 1 (``(1, H, W, C)``; ``(1, S, D)`` for sequences);
* ``rebuild(variables) -> Prunable`` - the same network at the widths those variables
  have: a real, smaller network, not masks.

The zoo rebuilds from its width entries (:func:`prunable`, read off the arrays with
:func:`~hobs_jax.models.registry.infer_widths`); a user's linen module is rebuilt by
running its own ``__call__`` with every layer sized from its variables, an NNX module
by replacing its arrays and layer attributes (both in :mod:`hobs_jax.graph`, where
surgery lives; ``hobs_jax.graph.prunable(...)`` builds those). Entry points take a
Prunable, a ``(module, variables)`` pair or a zoo name; ``hobs_jax.graph.as_prunable``
turns any of them into a Prunable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from hobs_jax.models.registry import MODELS, build, get_entry, infer_widths, init, input_shape as _input_shape

KINDS = ("zoo", "linen", "nnx")


@dataclasses.dataclass(frozen=True, eq=False)
class Prunable:
    """A network with its variables, its input and a way to rebuild it at other widths.

    Attributes:
      module: what ``apply(variables, x, train=False)`` runs (see module docstring).
      variables: its variables (``params``, ``batch_stats``).
      input_shape: one example's input shape, batch 1.
      rebuild: ``rebuild(variables) -> Prunable`` at the widths of ``variables``.
      kind: "zoo", "linen" or "nnx".
      name: the zoo registry name (None outside the zoo).
      label: the name used in messages and plans: the zoo name, or
        ``package.module.Class`` of a user's module.
      fixed: ``(collection, leaf path, axis, reason)`` of variable axes whose size the
        rebuild cannot change (e.g. the query/key head dim of an attention layer, which
        sets its softmax temperature); their groups are not prunable.
      source: the user's own object (the linen module; the NNX module at these widths),
        for export and for :meth:`to_nnx`.
    """

    module: Any
    variables: Mapping
    input_shape: tuple[int, ...]
    rebuild: Callable[[Mapping], "Prunable"]
    kind: str = "zoo"
    name: str | None = None
    label: str = ""
    fixed: tuple = ()
    source: Any = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Prunable kind {self.kind!r}: use one of {KINDS}")
        object.__setattr__(self, "input_shape", (1,) + tuple(int(d) for d in self.input_shape[1:]))
        if not self.label:
            object.__setattr__(self, "label", self.name or type(self.module).__name__)

    def apply(self, x, *, train: bool = False, **kwargs):
        """``module.apply(variables, x, train=train, **kwargs)``."""
        return self.module.apply(self.variables, x, train=train, **kwargs)

    def with_variables(self, variables: Mapping) -> "Prunable":
        """The same network holding ``variables`` of the same widths (e.g. after BN
        re-estimation or fine-tuning); use :attr:`rebuild` for other widths."""
        return dataclasses.replace(self, variables=variables)

    def to_nnx(self):
        """The NNX module holding :attr:`variables` (NNX networks only): an ordinary
        ``nnx.Module`` at these widths, ready for ``nnx.Optimizer``."""
        if self.kind != "nnx":
            raise ValueError(f"{self.label} is a {self.kind} network, not an NNX module")
        from hobs_jax.graph.nnx_model import to_nnx

        return to_nnx(self)


def _zoo_module(model: Any, variables: Mapping | None) -> tuple[str, Any]:
    if isinstance(model, str):
        name = model
        get_entry(name)
        if variables is None:
            return name, build(name)
        widths, nc, ic = infer_widths(name, variables)
        return name, build(name, widths=widths, num_classes=nc, in_channels=ic)
    arch = getattr(model, "arch", None)
    if arch not in MODELS:
        raise ValueError(f"{type(model).__name__} is not a zoo model (not built by hobs_jax.models.build)")
    if variables is not None and not getattr(model, "block_ell", None):
        widths, nc, ic = infer_widths(arch, variables)
        for key, want, got in [(k, v, widths.get(k)) for k, v in dict(model.widths).items()] + [
                ("@num_classes", model.num_classes, nc), ("@in_channels", model.in_channels, ic)]:
            if want != got:
                raise ValueError(f"{arch}: the variables have width {key!r} = {got}, the module {want}")
    return arch, model


_SKIP_FIELDS = ("parent", "name", "widths", "num_classes", "in_channels")


def extra_fields(name: str, module) -> dict:
    """Constructor fields of zoo ``module`` that differ from the registry's defaults
    (e.g. ViT's ``scale_dim``), so a rebuild is configured identically."""
    ref = build(name, widths=dict(module.widths), num_classes=module.num_classes,
                in_channels=module.in_channels)
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in _SKIP_FIELDS and f.init and getattr(module, f.name) != getattr(ref, f.name)}


def prunable(model: Any, variables: Mapping | None = None, input_shape=None) -> Prunable:
    """The :class:`Prunable` of zoo model ``model`` (a registry name or a zoo module).

    A name is built at the widths ``variables`` have; a module keeps its constructor
    fields (a ViT's ``scale_dim``) in every rebuild. ``variables`` default to the
    shapes of a fresh model (``jax.ShapeDtypeStruct``), ``input_shape`` to the zoo's.
    """
    name, module = _zoo_module(model, variables)
    if getattr(module, "block_ell", None):
        raise ValueError(f"{name} has Block-ELL layers; prune its dense form")
    extra = extra_fields(name, module)
    shape = tuple(input_shape) if input_shape is not None else _input_shape(name, 1, in_channels=module.in_channels)
    shape = (1,) + tuple(shape[1:])
    if variables is None:
        variables = jax.eval_shape(lambda: init(module, jax.random.key(0), shape))

    def rebuild(new_variables: Mapping) -> Prunable:
        widths, nc, ic = infer_widths(name, new_variables)
        new = build(name, widths=widths, num_classes=nc, in_channels=ic, **extra)
        return Prunable(new, new_variables, shape, rebuild, "zoo", name, name)

    return Prunable(module, variables, shape, rebuild, "zoo", name, name)
