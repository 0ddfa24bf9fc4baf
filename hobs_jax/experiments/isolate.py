"""One function call in a fresh Python process: measurements that must not share a
process (JAX and torch disturb each other's timings; a cold XLA compile needs a process
without compiled executables; peak memory is per process).

    from hobs_jax.experiments.isolate import call
    result = call("hobs_jax.experiments.graph_speed:ours", name="resnet50", repeats=5,
                  framework="jax", threads=0)

The child is ``python -m hobs_jax.experiments.isolate``; it reads one JSON request
(``{"target": "module:function", "kwargs": {...}}``) from stdin, calls the function and
writes its JSON-able result to the file named in the request. Its environment is the
inference suite's worker environment (:func:`hobs_jax.bench.protocol.worker_env`: this
checkout on the path, thread counts, JAX on the CPU unless a GPU is asked for); stdout and
stderr go to a log whose last line is quoted when the call fails.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

__all__ = ["call"]


def call(target: str, *, framework: str = "jax", threads: int = 0, gpu: bool = False,
         env: Mapping[str, str] | None = None, drop_env: tuple[str, ...] = (),
         timeout: float | None = None, args: Mapping[str, Any] | None = None, **kwargs) -> Any:
    """``module:function(**kwargs)`` in a fresh process; returns its result.

    Args:
      target: ``'package.module:function'`` (importable from this checkout).
      framework, threads, gpu: the child's environment (``worker_env``; ``threads`` 0 = all).
      env: extra variables; drop_env: variables to remove (e.g. a compilation cache).
      kwargs: JSON-able keyword arguments of the function (``args``: the same as a mapping,
        for names this function takes itself, e.g. ``threads``).
    Raises:
      RuntimeError: one line with the child's exit code and last log line.
    """
    from hobs_jax.bench.protocol import worker_env

    module, _, fn = target.partition(":")
    if not module or not fn:
        raise ValueError(f"target={target!r}: use 'package.module:function'")
    child_env = worker_env(framework if framework in ("jax", "torch", "onnxruntime") else "jax",
                           threads=threads, gpu=gpu)
    child_env.update(env or {})
    for k in drop_env:
        child_env.pop(k, None)
    with tempfile.TemporaryDirectory(prefix="hobs_isolate_") as tmp:
        out, log = os.path.join(tmp, "result.json"), os.path.join(tmp, "log.txt")
        request = json.dumps({"target": target, "kwargs": {**(args or {}), **kwargs}, "out": out})
        with open(log, "w") as lf:
            proc = subprocess.run([sys.executable, "-m", "hobs_jax.experiments.isolate"], input=request,
                                  text=True, stdout=lf, stderr=subprocess.STDOUT, env=child_env,
                                  timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            with open(log) as lf:
                lines = [ln.strip() for ln in lf if ln.strip()]
            raise RuntimeError(f"{target} failed in its process (exit {proc.returncode}): "
                               f"{lines[-1] if lines else '(no output)'}")
        with open(out) as f:
            return json.load(f)


def _child() -> None:
    req = json.loads(sys.stdin.read())
    module, _, fn = req["target"].partition(":")
    result = getattr(importlib.import_module(module), fn)(**req["kwargs"])
    with open(req["out"] + ".tmp", "w") as f:
        json.dump(result, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(req["out"] + ".tmp", req["out"])


if __name__ == "__main__":
    _child()
