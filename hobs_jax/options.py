"""Typed, validated options: the frozen dataclass every pluggable part declares.

A part (a method's scorer, allocator, compensator or regularizer, see
:mod:`hobs_jax.methods.parts`) declares its options as a frozen dataclass deriving from
:class:`Options`, with a type annotation and a default per field::

    @dataclasses.dataclass(frozen=True)
    class GlobalOptions(Options):
        normalize: Literal["none", "mean", "max", "cost"] = "mean"
        min_ratio: float = 0.1

        def check(self):
            self.require(0.0 <= self.min_ratio < 1.0, "min_ratio", "must be in [0, 1)")

Building one (``GlobalOptions.build(mapping, where="magnitude")``, or the constructor)
checks every value against its annotation (``int`` refuses bools and floats, ``float``
takes ints, ``bool`` only bools, ``Literal[...]`` its choices, a nested :class:`Options`
a mapping of its own fields) and then runs :meth:`Options.check` for ranges; the first
problem is a one-line ``ValueError`` naming the key (``magnitude: min_ratio=1.5: must be
in [0, 1)``), and an unknown key is one too. Nothing is ever overwritten silently: a
part that needs another value derives it in its own code, in the open.

The pipeline's configs expose the same fields as an ``ml_collections.ConfigDict``
section (:func:`to_config`), so ``--config.prune.hobs.damp=0.02`` keeps working.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Options", "as_dict", "to_config"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every part's options (module doc). Subclasses are frozen dataclasses whose
    fields all have defaults; ``where`` (set by :meth:`build`) prefixes error messages."""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = _coerce(getattr(self, f.name), hints[f.name], f.name, self._where())
            object.__setattr__(self, f.name, value)
        self.check()

    # -- what subclasses override -------------------------------------------------------
    def check(self) -> None:
        """Range checks beyond the annotations (call :meth:`require`); default none."""

    @classmethod
    def smoke(cls) -> dict:
        """Overrides that make the part cheap for a test or a smoke run (e.g. a few
        episodes, no progress bars); merged by :meth:`hobs_jax.methods.MethodSpec.smoke_config`."""
        return {}

    # -- helpers ------------------------------------------------------------------------
    def require(self, ok: bool, key: str, why: str) -> None:
        """One-line ``ValueError`` ``"<where>: key=value: why"`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{self._prefix()}{key}={getattr(self, key)!r}: {why}")

    def _where(self) -> str:
        return getattr(self, "_where_", "") or ""

    def _prefix(self) -> str:
        w = self._where()
        return f"{w}: " if w else ""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))

    @classmethod
    def defaults(cls) -> dict:
        """{field: default} (nested options as dicts)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            else:
                factory = f.default_factory
                assert callable(factory), f.name  # every Options field has a default
                out[f.name] = factory().to_dict()  # nested Options
        return out

    @classmethod
    def build(cls, values: Mapping | None = None, *, where: str = "") -> Options:
        """An instance from ``values`` (missing keys: defaults); one-line errors for an
        unknown key or a bad value, prefixed with ``where``."""
        values = dict(as_dict(values or {}))
        unknown = [k for k in values if k not in cls.keys()]
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}unknown option {unknown[0]!r}; options: {', '.join(cls.keys()) or 'none'}")
        return _construct(cls, values, where)

    def replace(self, **changes) -> Options:
        """A validated copy with ``changes``."""
        return _construct(type(self), {**self.to_dict(), **changes}, self._where())

    def to_dict(self) -> dict:
        """{field: value}, nested options as dicts (JSON-able for plain field types)."""
        out = {}
        for k in self.keys():
            v = getattr(self, k)
            out[k] = v.to_dict() if isinstance(v, Options) else v
        return out


def _construct(cls, values: dict, where: str):
    """``cls(**values)`` with ``where`` set before validation runs."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_where_", where)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        if f.name in values:
            v = values[f.name]
            hint = hints[f.name]
            if isinstance(hint, type) and issubclass(hint, Options) and not isinstance(v, Options):
                if not isinstance(v, Mapping):
                    raise ValueError(f"{where + ': ' if where else ''}{f.name}={v!r}: must be a mapping of "
                                     f"{', '.join(hint.keys())}")
                v = hint.build(v, where=f"{where}.{f.name}" if where else f.name)
        elif f.default is not dataclasses.MISSING:
            v = f.default
        else:
            factory = f.default_factory
            assert callable(factory), f.name  # every Options field has a default
            v = factory()
        object.__setattr__(obj, f.name, v)
    obj.__post_init__()
    return obj


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def as_dict(values) -> Mapping:
    """A ConfigDict (or FrozenConfigDict) as a plain dict; other mappings as they are."""
    to_dict = getattr(values, "to_dict", None)
    if callable(to_dict) and not isinstance(values, Options):
        return to_dict()
    if isinstance(values, Options):
        return values.to_dict()
    if not isinstance(values, Mapping):
        raise ValueError(f"options must be a mapping, got {type(values).__name__}")
    return values


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` checked against annotation ``hint`` (ints widen to float)."""
    prefix = f"{where}: " if where else ""

    def bad(why: str):
        return ValueError(f"{prefix}{key}={value!r}: {why}")

    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise bad(f"use one of {choices}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("must be True or False")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer():
                raise bad("must be an int (not a float)")
            raise bad("must be an int")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("must be a string")
        return value
    if isinstance(hint, type) and issubclass(hint, Options):
        if not isinstance(value, hint):
            raise bad(f"must be {hint.__name__}")
        return value
    raise TypeError(f"{prefix}{key}: unsupported option type {hint!r}")


def to_config(values: Mapping):
    """An ``ml_collections.ConfigDict`` of ``values`` (nested dicts become sections)."""
    import ml_collections

    return ml_collections.ConfigDict({k: (to_config(v) if isinstance(v, Mapping) else v)
                                      for k, v in values.items()})
