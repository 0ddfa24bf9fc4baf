"""Channel widths: the single source of every prunable channel count of a zoo model.

A model's widths are a flat mapping ``entry name -> int``. Entry names are the torch
module path of the layer that first produces those channels (``"layer1.0.conv1"``,
``"features.4"``), so a pruned model is the same class built at smaller widths and its
PyTorch export knows which module each count belongs to. Channels that are tied by the
topology (a residual stream, a depthwise conv's input and output) share one entry.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from flax.core import FrozenDict

Widths = FrozenDict  # FrozenDict[str, int]; hashable, so Flax modules can hold it.


def resolve_widths(model: str, defaults: Mapping[str, int],
                   overrides: Mapping[str, int] | None) -> Widths:
    """Merge ``overrides`` into ``defaults`` and validate every entry.

    Raises a one-line ``ValueError`` naming the entry for an unknown key, a value that
    is not an integer, or a value < 1 (zero channels would disconnect the network).
    """
    merged = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            near = [k for k in defaults if k.split(".")[0] == str(key).split(".")[0]][:3]
            hint = f" (entries like {near})" if near else f" ({len(defaults)} entries; see default_widths('{model}'))"
            raise ValueError(f"{model}: unknown width entry {key!r}{hint}")
        merged[key] = value
    for key, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{model}: width {key!r} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{model}: width {key!r} must be >= 1, got {value}")
        merged[key] = int(value)
    return FrozenDict(merged)
