"""The one registry of pruning methods (found by name from configs)."""

from __future__ import annotations

from typing import Callable

import ml_collections

from hobs_jax.methods.base import MethodSpec, PruneOutcome, PruneTask

METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, default_config: Callable[[], ml_collections.ConfigDict],
             needs_data: bool, summary: str):
    """Decorator: ``@register("magnitude", default_config=..., needs_data=False, summary=...)``
    on ``def prune(task: PruneTask) -> PruneOutcome``."""

    def wrap(fn: Callable[[PruneTask], PruneOutcome]):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = MethodSpec(name, fn, default_config, needs_data, summary)
        return fn

    return wrap


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[str]:
    return sorted(METHODS)


def config_sections() -> ml_collections.ConfigDict:
    """One sub-section per method (its defaults), for the pipeline's ``prune`` section."""
    c = ml_collections.ConfigDict()
    for name in sorted(METHODS):
        c[name] = METHODS[name].default_config()
    return c
