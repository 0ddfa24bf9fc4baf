"""Fault injection at named points of the main job (the reliability tests' hook).

    HOBS_JAX_FAULT=finetune.step@3=kill python -m hobs_jax.main --config=... --workdir=...

makes the run ``kill -9`` itself when the fine-tuning loop writes its step-3 record;
``tests/test_faults.py`` chains such runs (each killed at a later point, the last one
completing) and checks that the final summary equals an uninterrupted run's. The hook
costs one dictionary look-up per point when the variable is unset.

Spec: ``<point>[@<n>]=<action>``, several separated by commas. ``n`` is the step or
batch number for points that carry one, else the n-th time the point is reached in this
process (default 1). Actions: ``kill`` (SIGKILL), ``term`` (SIGTERM), ``int`` (SIGINT),
``term2`` (two SIGTERMs: the second stops at once, see :mod:`hobs_jax.interrupt`),
``stop`` (SIGSTOP: the process freezes, holding its locks, until the test resumes or
kills it).

Points (see docs/reliability.md for where each sits):
  ``<stage>.start``, ``<stage>.end`` (the stage function returned, its record not yet
  written), ``<stage>.recorded`` for every pipeline stage; ``train.step`` and
  ``finetune.step`` (after each step's train record, n = step; the equal-budget study
  fires ``finetune.step`` and ``method_training.step`` for its rows' two trainings); ``checkpoint.save``
  (a training checkpoint's asynchronous write started, n = step); ``hessians.batch``
  (calibration statistics, after batch n, 0-based); ``rspar.episode`` (before
  episode n); ``latency_feedback.round`` (a measured latency round timed and journaled,
  n = round; :mod:`hobs_jax.methods.measured`); ``record.write`` (a stage record's temporary file written, not yet
  renamed into place).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

ENV = "HOBS_JAX_FAULT"
ACTIONS = {"kill": (signal.SIGKILL,), "term": (signal.SIGTERM,), "int": (signal.SIGINT,),
           "term2": (signal.SIGTERM, signal.SIGTERM), "stop": (signal.SIGSTOP,)}

_parsed: tuple[str | None, dict[str, list[tuple[int | None, str]]]] = (None, {})
_counts: dict[str, int] = {}


def parse(spec: str) -> dict[str, list[tuple[int | None, str]]]:
    """``point -> [(n or None, action)]`` of a spec; one-line ``ValueError`` if malformed."""
    out: dict[str, list[tuple[int | None, str]]] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        where, eq, action = item.rpartition("=")
        point, at, n = where.partition("@")
        if not eq or not point or action not in ACTIONS or (at and not n.isdigit()):
            raise ValueError(f"{ENV}={spec!r}: expected <point>[@<n>]=<action> with action in "
                             f"{'/'.join(ACTIONS)}, got {item!r}")
        out.setdefault(point, []).append((int(n) if at else None, action))
    return out


def _spec() -> dict[str, list[tuple[int | None, str]]]:
    global _parsed
    raw = os.environ.get(ENV)
    if raw != _parsed[0]:
        _parsed = (raw, parse(raw) if raw else {})
    return _parsed[1]


def point(name: str, n: int | None = None) -> None:
    """Fire the fault configured for ``name`` (at ``n``, or at its n-th visit), if any."""
    spec = _spec()
    if name not in spec:
        return
    if n is None:
        n = _counts[name] = _counts.get(name, 0) + 1
    for at, action in spec[name]:
        if at is None and n == 1 or at == n:
            sys.stderr.write(f"hobs_jax: fault injected at {name}@{n}: {action}\n")
            sys.stderr.flush()
            for s in ACTIONS[action]:
                os.kill(os.getpid(), s)


def step_callback(stage: str) -> Callable[[str, int, dict], None]:
    """A :func:`hobs_jax.train.fit` callback firing ``<stage>.step`` at every train record."""
    def callback(kind: str, step: int, record: dict) -> None:
        del record
        if kind == "train":
            point(f"{stage}.step", step)
    return callback
