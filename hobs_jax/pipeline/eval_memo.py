"""Test-set evaluations shared between the pipeline runs of one process.

A sweep (:mod:`hobs_jax.experiments.sweep`) runs the pipeline once per row in one
process: every row's ``evaluate`` stage measures the same dense checkpoint again, and the
pruned network that its ``prune`` stage measured a moment before (after BN
re-estimation, reloaded from the workdir). On the 2-core CPU a pass over the 10,000
Fashion-MNIST test images is the largest single cost of a one-shot row: the evaluate
stage (these two passes) took 22.4 of the 51 row-minutes of a ``make reproduce QUICK=1``
before this memo (docs/results/HISTORY.md). An evaluation is a pure function of the network, its
variables and the data, so its result is kept here under a digest of exactly those and
reused; a different byte in any of them is a different key.

Only zoo networks are memoized (their module, including the widths, is its ``repr``);
a module of one's own may hold state its ``repr`` does not show, so it is always
evaluated. The memo lives in this process only (nothing is written to disk) and holds
at most :data:`MAX_ENTRIES` results.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

MAX_ENTRIES = 256
_MEMO: collections.OrderedDict[str, dict] = collections.OrderedDict()
_STATS = {"hits": 0, "misses": 0}


def variables_digest(variables: Mapping) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes (host copies)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def key(model: Any, variables: Mapping, data: str) -> str:
    """The memo key of evaluating ``model`` with ``variables`` on ``data`` (a string that
    names the data completely: source, split, batch size, preprocessing)."""
    h = hashlib.sha256()
    for part in (type(model).__module__, type(model).__qualname__, repr(model), data, str(jax.device_count()),
                 variables_digest(variables)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def evaluate(model: Any, variables: Mapping, data: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` (an evaluation of ``model`` with ``variables`` on ``data``), or the
    result it gave before for the same key (a copy)."""
    k = key(model, variables, data)
    if k in _MEMO:
        _MEMO.move_to_end(k)
        _STATS["hits"] += 1
        return dict(_MEMO[k])
    _STATS["misses"] += 1
    out = compute()
    _MEMO[k] = dict(out)
    while len(_MEMO) > MAX_ENTRIES:
        _MEMO.popitem(last=False)
    return out


def stats() -> dict:
    """``{"hits", "misses", "entries"}`` since the process started (or :func:`clear`)."""
    return dict(_STATS, entries=len(_MEMO))


def clear() -> None:
    _MEMO.clear()
    _STATS.update(hits=0, misses=0)


__all__ = ["MAX_ENTRIES", "clear", "evaluate", "key", "stats", "variables_digest"]
