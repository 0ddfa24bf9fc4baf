"""Device-side timing of jitted JAX calls from a profiler trace (GPU).

Host wall clocks around ``block_until_ready`` include dispatch and the host/device
synchronisation, which on the lent H100 machines is 0.4-0.8 ms per call: more than a
4096^3 bf16 matmul. ``device_times`` runs each call inside ``jax.profiler.trace``
(CUPTI activity records), one ``TraceAnnotation`` per call, and reads back, for each
call, the GPU kernels that ran inside its annotation window:

* ``span_ms``: first kernel start to last kernel end (the device latency of the call,
  gaps between its kernels included);
* ``busy_ms``: the sum of its kernel durations;
* ``kernels``: the number of kernels it launched.

Medians over the calls are returned. Calls rotate over several argument sets, so
inputs that fit in L2 are not re-read from a warm cache every time (dense and sparse
get the same rotation). On a platform without device activity records (CPU) the
result is ``None``; callers fall back to wall-clock timing.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["device_times", "device_times_many", "parse_trace"]

PREFIX = "devtime_call_"


def parse_trace(path: str, prefix: str = PREFIX) -> dict[int, dict[str, float]] | None:
    """Per-call device figures from a perfetto trace (see module docstring).

    Returns ``{call id: {"span_ms", "busy_ms", "kernels"}}`` for every annotated call
    (``prefix`` + id) that launched at least one kernel, or None if the trace has no
    GPU stream.
    """
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    pname, tname = {}, {}
    for e in events:
        if e.get("ph") != "M":
            continue
        if e.get("name") == "process_name":
            pname[e["pid"]] = e["args"]["name"]
        elif e.get("name") == "thread_name":
            tname[(e["pid"], e["tid"])] = e["args"]["name"]
    gpu_pids = {p for p, n in pname.items() if "/device:GPU" in n}
    if not gpu_pids:
        return None
    kernels, windows = [], {}
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e.get("name", "")
        if name.startswith(prefix) and e["pid"] not in gpu_pids:
            windows[int(name[len(prefix):])] = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        elif e["pid"] in gpu_pids:
            thread = tname.get((e["pid"], e["tid"]), "")
            if "Stream" in thread and "XLA" not in thread:
                kernels.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    if not kernels:
        return None
    kernels.sort()
    out = {}
    bounds = sorted(windows.items(), key=lambda item: item[1][0])
    for i, (call, (t0, _)) in enumerate(bounds):
        # A call's kernels start after its annotation opens and before the next opens
        # (the host blocks on each call, so they never overlap the next one).
        t1 = bounds[i + 1][1][0] if i + 1 < len(bounds) else float("inf")
        mine = [k for k in kernels if t0 <= k[0] < t1]
        if not mine:
            continue
        out[call] = {"span_ms": (max(k[1] for k in mine) - mine[0][0]) / 1e3,
                     "busy_ms": sum(k[1] - k[0] for k in mine) / 1e3,
                     "kernels": float(len(mine))}
    return out or None


def device_times_many(fns: dict[str, tuple[Callable[..., Any], Sequence[tuple]]], *,
                      calls: int = 16, warmup: int = 2
                      ) -> dict[str, dict[str, float]] | None:
    """``device_times`` for several functions in one profiler session.

    Args:
      fns: name -> (jitted function, argument tuples rotated call by call).
      calls, warmup: per function.
    Returns:
      name -> ``{"span_ms", "busy_ms", "kernels", "calls"}`` (medians), or None
      without device activity records (CPU) or if a function launched no kernel.
    """
    for fn, sets in fns.values():
        for i in range(max(1, warmup)):
            jax.block_until_ready(fn(*sets[i % len(sets)]))
    owner: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="devtime_") as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for name, (fn, sets) in fns.items():
                for i in range(calls):
                    call = len(owner)
                    owner[call] = name
                    with jax.profiler.TraceAnnotation(f"{PREFIX}{call}"):
                        jax.block_until_ready(fn(*sets[i % len(sets)]))
        paths = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        per_call = parse_trace(paths[0]) if paths else None
    if not per_call:
        return None
    out = {}
    for name in fns:
        mine = [v for call, v in per_call.items() if owner.get(call) == name]
        if not mine:
            return None
        out[name] = {key: statistics.median(c[key] for c in mine)
                     for key in ("span_ms", "busy_ms", "kernels")} | {"calls": float(len(mine))}
    return out


def device_times(fn: Callable[..., Any], arg_sets: Sequence[tuple], *, calls: int = 20,
                 warmup: int = 2) -> dict[str, float] | None:
    """Median device span/busy time (ms) and kernel count of ``fn(*args)``.

    Args:
      fn: a jitted function.
      arg_sets: argument tuples; call i uses ``arg_sets[i % len(arg_sets)]``.
      calls: traced calls (each blocked on before the next starts).
      warmup: untraced calls first (compilation, autotuning).
    Returns:
      ``{"span_ms", "busy_ms", "kernels", "calls"}`` (medians), or None without
      device activity records (CPU).
    """
    out = device_times_many({"fn": (fn, arg_sets)}, calls=calls, warmup=warmup)
    return None if out is None else out["fn"]
