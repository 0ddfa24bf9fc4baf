"""The registries: parts by kind, and methods (named compositions of parts).

Parts register under a kind (``regularizer``, ``scorer``, ``allocator``,
``compensator``) and a name. A part that lives in a package above this one (R-SPAR's
allocator, :mod:`hobs_jax.rspar`) is *declared* by name and import path
(:func:`declare_part`) and imported the first time it is looked up, so
``hobs_jax.methods`` knows it only by name and never imports that package itself.
"""

from __future__ import annotations

import importlib
from typing import Any

KINDS = ("regularizer", "scorer", "allocator", "compensator")

PARTS: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_DECLARED: dict[str, dict[str, str]] = {k: {} for k in KINDS}
METHODS: dict[str, Any] = {}


def _kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown part kind {kind!r}; use one of {KINDS}")


def register_part(kind: str, part: Any) -> Any:
    """Register ``part`` (an object with ``name``, ``Options``, ``needs_data`` and the
    methods of its kind's protocol, :mod:`hobs_jax.methods.parts`); returns it."""
    _kind(kind)
    name = part.name
    if name in PARTS[kind]:
        raise ValueError(f"{kind} {name!r} is already registered")
    PARTS[kind][name] = part
    return part


def declare_part(kind: str, name: str, target: str) -> None:
    """Declare a part provided by module ``target`` (``'package.module:attribute'``),
    imported on first lookup."""
    _kind(kind)
    if name in PARTS[kind] or name in _DECLARED[kind]:
        raise ValueError(f"{kind} {name!r} is already registered")
    _DECLARED[kind][name] = target


def get_part(kind: str, name: str) -> Any:
    """The part ``name`` of ``kind`` (imports a declared one on first use)."""
    _kind(kind)
    if name not in PARTS[kind] and name in _DECLARED[kind]:
        module, _, attr = _DECLARED[kind][name].partition(":")
        part = getattr(importlib.import_module(module), attr)
        PARTS[kind].setdefault(name, part)
    if name not in PARTS[kind]:
        known = sorted(set(PARTS[kind]) | set(_DECLARED[kind]))
        raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(known)}")
    return PARTS[kind][name]


def list_parts(kind: str) -> list[str]:
    _kind(kind)
    return sorted(set(PARTS[kind]) | set(_DECLARED[kind]))


def register_method(name: str, *, scorer: str, allocators: tuple[str, ...], compensator: str = "none",
                    regularizer: str | None = None, defaults: dict | None = None, summary: str = ""):
    """Register a named composition (see :class:`hobs_jax.methods.MethodSpec`): parts by
    name; ``allocators`` the allocators its ``allocation`` option may choose (the first
    is the default; with one there is no such option); ``defaults`` overrides of the
    parts' option defaults for this method. Returns the spec."""
    from hobs_jax.methods.compose import MethodSpec

    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    spec = MethodSpec(name, scorer=scorer, allocators=tuple(allocators), compensator=compensator,
                      regularizer=regularizer, defaults=dict(defaults or {}), summary=summary)
    METHODS[name] = spec
    return spec


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[str]:
    return sorted(METHODS)


def config_sections():
    """One sub-section per method (its defaults), for the pipeline's ``prune`` section."""
    import ml_collections

    c = ml_collections.ConfigDict()
    for name in sorted(METHODS):
        c[name] = METHODS[name].default_config()
    return c
