"""Calibration batches on concurrent host threads, results in batch order.

A jitted calibration step (Gram products, BN moments) over one batch keeps a 2-core CPU
only ~80% busy: XLA:CPU splits each op over its thread pool, and between the many small
ops of a step (per-layer Gram products over a few images at a time) a core waits. Two
host threads that each dispatch the step for a different batch fill those gaps (JAX
releases the GIL while an executable runs): about 20% less wall time for the same CPU
time on the 2-core CPU (docs/results/HISTORY.md).

:func:`ordered_map` returns the per-batch results in batch order, so a caller that sums
them in that order gets bit-for-bit the result of the sequential loop, whatever the
number of workers. At most ``workers`` batches are in flight (memory stays bounded by
that many batches of activations). On accelerators one device stream serializes the
executions anyway, so :func:`default_workers` is 1 there.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import jax

T = TypeVar("T")
R = TypeVar("R")


def default_workers(platform: str | None = None) -> int:
    """Host threads for calibration streams: 2 on CPU, 1 on accelerators."""
    return 2 if (platform or jax.default_backend()) == "cpu" else 1


def resolve_workers(workers: int | None) -> int:
    """``workers`` checked (a positive int), or :func:`default_workers` for None."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive int (or None for the default)")
    return workers


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for each item, yielded in item order, computed on up to ``workers``
    threads with at most ``workers`` items in flight (``items`` is consumed lazily).

    The first item runs alone, before any thread starts, so a jitted ``fn`` is traced
    and compiled once (two threads missing the compilation cache together would both
    compile). ``fn`` should block until its result is ready (e.g.
    ``jax.block_until_ready``) so that "in flight" bounds the work actually running. An
    exception raised by ``fn`` is re-raised when its item's turn comes (earlier items are
    yielded first); the items still running are awaited, the ones not started are dropped.
    """
    workers = resolve_workers(workers)
    items = iter(items)
    for item in items:  # the first one alone (compiles)
        yield fn(item)
        break
    if workers == 1:
        for item in items:
            yield fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calib") as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                if len(pending) >= workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
