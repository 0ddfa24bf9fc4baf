"""A network outside the zoo as data: its class's import path and constructor arguments.

What :func:`hobs_jax.export.save` stores and the pipeline's ``model.import_path`` /
``model.kwargs`` configure, so a user's module can be rebuilt in another process:

* a linen module: ``{"kind": "linen", "import_path": "pkg.mod:Class", "kwargs": {its
  dataclass fields}, "call_kwargs": {...}}`` (fields must be JSON values: numbers,
  strings, booleans, None, lists/tuples and dicts of those; lists come back as tuples,
  as Flax fields hold them);
* an NNX module: the same with ``kind: "nnx"`` and the ``__init__`` keyword arguments
  (an NNX module does not remember them: pass ``init_kwargs`` to ``export.save`` unless
  its defaults rebuild it), constructed abstractly on reload (``nnx.eval_shape``) and
  given the saved arrays, at the saved widths.

Refused in one line: a class defined in ``__main__`` or inside a function (no import
path), a field holding a function or an array, arguments that do not rebuild the same
variable tree.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Mapping

from hobs_jax.models.prunable import Prunable


def import_path(cls: type) -> str:
    """``package.module:Qualified.Name`` of ``cls``; one-line error when it has none."""
    mod, qual = cls.__module__, cls.__qualname__
    if mod == "__main__":
        raise ValueError(f"{qual} is defined in __main__: move it to an importable module so it can be reloaded")
    if "<locals>" in qual or "<lambda>" in qual:
        raise ValueError(f"{mod}.{qual} is defined inside a function: it has no import path to reload it from")
    return f"{mod}:{qual}"


def resolve(path: str) -> type:
    """The class at ``package.module:Qualified.Name`` (one-line error otherwise)."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"import path {path!r}: use 'package.module:ClassName'")
    mod, qual = path.split(":")
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"import path {path!r}: cannot import {mod!r} ({e})") from None
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"import path {path!r}: {mod} has no {qual!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"import path {path!r} names a {type(obj).__name__}, not a class")
    return obj


def _json_value(name: str, value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(name, v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_value(name, v, where) for k, v in value.items()}
    raise ValueError(f"{where}: argument {name!r} holds a {type(value).__name__}, which cannot be saved as JSON "
                     f"(only numbers, strings, booleans, None, lists and dicts)")


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def spec_of(p: Prunable, init_kwargs: Mapping[str, Any] | None = None) -> dict:
    """The JSON spec of non-zoo ``p`` (module docstring)."""
    import flax.linen as nn

    if p.kind == "zoo":
        raise ValueError(f"{p.label} is a zoo model: it is saved by name and widths")
    user = p.source
    cls = type(user)
    path = import_path(cls)
    where = f"{cls.__qualname__}"
    if p.kind == "linen":
        if init_kwargs is not None:
            raise ValueError("init_kwargs is for NNX modules; a linen module's fields are saved as they are")
        kwargs = {f.name: _json_value(f.name, getattr(user, f.name), where)
                  for f in dataclasses.fields(user) if f.init and f.name not in ("parent", "name")}
        call = dict(p.module.kwargs) if isinstance(p.module, nn.Module) else {}
    else:
        kwargs = {k: _json_value(k, v, where) for k, v in dict(init_kwargs or {}).items()}
        call = dict(p.module.kwargs)
    spec = {"kind": p.kind, "import_path": path, "kwargs": kwargs,
            "call_kwargs": {k: _json_value(k, v, where) for k, v in call.items()}}
    json.dumps(spec)
    return spec


def build(spec: Mapping[str, Any]):
    """The (unbound linen / abstract NNX) module a spec describes, at its constructor's
    widths."""
    cls = resolve(spec["import_path"])
    kwargs = _tuples(dict(spec.get("kwargs") or {}))
    where = spec["import_path"]
    if spec["kind"] == "linen":
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"{where}: cannot construct it from {sorted(kwargs)} ({e})") from None
    from flax import nnx

    try:
        return nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))
    except TypeError as e:
        raise ValueError(f"{where}: cannot construct it from {sorted(kwargs)} ({e})") from None


def prunable_from_spec(spec: Mapping[str, Any], variables: Mapping, input_shape) -> Prunable:
    """The :class:`Prunable` of a spec holding ``variables`` (any widths), checked: the
    variables must be the module's tree, and the module must run on them."""
    from hobs_jax.graph.nnx_model import split_variables, with_arrays
    from hobs_jax.graph.prunable import _check_structure, linen_prunable, nnx_prunable

    module = build(spec)
    call = _tuples(dict(spec.get("call_kwargs") or {}))
    if spec["kind"] == "linen":
        return linen_prunable(module, variables, input_shape, call_kwargs=call)
    shapes, _ = split_variables(module)
    _check_structure(spec["import_path"], shapes, {k: v for k, v in variables.items() if k in shapes})
    return nnx_prunable(with_arrays(module, variables), input_shape, call_kwargs=call)


def check_spec(p: Prunable, spec: Mapping[str, Any]) -> None:
    """One-line error unless ``spec`` rebuilds ``p``'s variable tree (before saving)."""
    from hobs_jax.graph.nnx_model import split_variables
    from hobs_jax.graph.prunable import _check_structure

    from hobs_jax.graph.prunable import linen_prunable

    module = build(spec)
    if spec["kind"] == "nnx":
        shapes, _ = split_variables(module)
        _check_structure(f"{spec['import_path']} built from {spec.get('kwargs') or 'its defaults'} "
                         f"(pass init_kwargs=)", shapes, p.variables)
    else:
        linen_prunable(module, p.variables, p.input_shape, call_kwargs=_tuples(dict(spec.get("call_kwargs") or {})))
