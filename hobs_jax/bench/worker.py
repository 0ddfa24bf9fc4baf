"""The worker's side of the protocol (:mod:`hobs_jax.bench.protocol`):
``python -m hobs_jax.bench.worker FRAMEWORK`` serves requests from stdin until ``quit``.

:class:`Backend` holds what every framework shares (the request loop's ops, memory
readings, the warm-up and timing loops); a framework module supplies ``build``: one
configuration as a :class:`Runnable`. Frameworks are imported here only inside their own
worker process.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

BACKENDS = {"jax": "hobs_jax.bench.backend_jax:JaxBackend",
            "onnxruntime": "hobs_jax.bench.backend_onnx:OrtBackend",
            "torch": "hobs_jax.bench.backend_torch:TorchBackend",
            "export": "hobs_jax.bench.worker:ExportBackend"}


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def _status(key: str) -> float | None:
    """A ``/proc/self/status`` field in MiB (VmRSS, VmHWM), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0), so that VmHWM
    afterwards is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Unsupported(Exception):
    """This framework cannot take the model at all (e.g. no torch conversion for it): the
    parent reports its configurations as skipped rather than failed."""


class Runnable:
    """One prepared configuration.

    Attributes:
      run: one synchronous call (returns when the result is computed; on a GPU after the
        device finished); returns the raw output.
      to_numpy: raw output -> float32 numpy array in NHWC/[B, classes] layout.
      memory_mb: the runtime's own memory statistic for this configuration, or None.
      note: what the runtime actually used (e.g. the ONNX Runtime provider).
    """

    def __init__(self, run: Callable[[], Any], to_numpy: Callable[[Any], np.ndarray],
                 memory_mb: Callable[[], float | None] | None = None, note: str = ""):
        self.run, self.to_numpy = run, to_numpy
        self.memory_mb = memory_mb or (lambda: None)
        self.note = note


class Backend:
    """Ops shared by every framework; subclasses implement :meth:`build` and
    :meth:`framework_info`."""

    framework = "?"

    def __init__(self):
        self.threads = int(os.environ.get("HOBS_BENCH_THREADS", "0") or 0)
        self.prepared: dict[str, tuple[Runnable, int]] = {}
        self._inputs: dict[str, np.ndarray] = {}
        self._models: dict[str, tuple] = {}

    # -- helpers for subclasses ------------------------------------------------------
    def inputs(self, path: str, batch: int) -> np.ndarray:
        """The first ``batch`` examples of the run's input pool (NHWC float32)."""
        if path not in self._inputs:
            self._inputs[path] = np.load(path, mmap_mode="r")
        pool = self._inputs[path]
        if batch > pool.shape[0]:
            raise ValueError(f"batch {batch} exceeds the input pool of {pool.shape[0]}")
        return np.ascontiguousarray(pool[:batch], np.float32)

    def saved_model(self, path: str):
        """``(module, variables, meta)`` of a saved model, loaded once per worker."""
        if path not in self._models:
            import hobs_jax

            self._models[path] = hobs_jax.load(path)
        return self._models[path]

    # -- ops ---------------------------------------------------------------------------
    def op_hello(self) -> dict:
        return {"framework": self.framework, "pid": os.getpid(), "threads": self.threads,
                **self.framework_info()}

    def framework_info(self) -> dict:
        return {}

    def preload(self, req: dict) -> None:
        """One-time work per model that is not part of a configuration's compile time
        (reading the checkpoint, converting the weights to the framework)."""

    def build(self, req: dict) -> Runnable:
        raise NotImplementedError

    def op_prepare(self, **req) -> dict:
        """Build configuration ``req['key']``, run it once (its output is the verification
        output, saved to ``req['output']``) and ``warmup`` more times. ``compile_s`` is the
        time from building to the end of the first call (compilation, session creation or
        engine build included); ``peak_rss_mb`` the process' peak RSS meanwhile and
        ``rss_delta_mb`` that peak minus the RSS before."""
        key = req["key"]
        self.op_release(key)
        try:
            self.preload(req)
        except Exception as e:
            raise Unsupported(f"{self.framework} cannot take this model: {one_line(e)}") from e
        have_reset = reset_peak_rss()
        rss0 = _status("VmRSS")
        t0 = time.perf_counter()
        r = self.build(req)
        y = r.run()
        compile_s = time.perf_counter() - t0
        out = r.to_numpy(y)
        np.save(req["output"], np.asarray(out, np.float32))
        for _ in range(int(req.get("warmup", 0))):
            r.run()
        peak = _status("VmHWM") if have_reset else None
        self.prepared[key] = (r, int(req["batch"]))
        return {"compile_s": compile_s, "output": req["output"], "output_shape": list(np.shape(out)),
                "peak_rss_mb": peak, "rss_delta_mb": None if peak is None or rss0 is None else peak - rss0,
                "runtime_mem_mb": r.memory_mb(), "note": r.note}

    def op_time(self, key: str, n: int, warm: int = 1, clock: str = "wall") -> dict:
        """``warm`` untimed calls, then ``n`` timed ones: per-call milliseconds of wall
        time, or (``clock="cpu"``) of this process' CPU time (all its threads)."""
        if key not in self.prepared:
            raise ValueError(f"configuration {key!r} is not prepared")
        run = self.prepared[key][0].run
        for _ in range(warm):
            run()
        ms = []
        clock = time.process_time if clock == "cpu" else time.perf_counter
        for _ in range(n):
            t0 = clock()
            run()
            ms.append((clock() - t0) * 1e3)
        return {"ms": ms}

    def op_release(self, key: str) -> dict:
        self.prepared.pop(key, None)
        return {}


class ExportBackend(Backend):
    """The ``export`` worker: ONNX files through :func:`hobs_jax.export.to_onnx` (today
    through torch, hence a process of its own)."""

    framework = "export"

    def op_export_onnx(self, model_path: str, input_shape: list[int], out: str) -> dict:
        from hobs_jax import export

        module, variables, _ = self.saved_model(model_path)
        t0 = time.perf_counter()
        path = export.to_onnx(module, variables, out, input_shape=(1,) + tuple(input_shape))
        return {"path": path, "seconds": time.perf_counter() - t0}


def _pin_threads(threads: int) -> None:
    """Restrict this process to ``threads`` cores (frameworks size their pools from the
    CPUs they may run on)."""
    if threads <= 0:
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
    except (AttributeError, OSError):
        pass


def make_backend(framework: str) -> Backend:
    if framework not in BACKENDS:
        raise ValueError(f"unknown worker framework {framework!r}; use {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[framework].partition(":")
    return getattr(importlib.import_module(module), cls)()


def serve(backend: Backend, requests, answer: Callable[[dict], None]) -> None:
    """Answer each JSON request line until ``quit`` (or the end of input)."""
    for line in requests:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.pop("op")
        except (ValueError, KeyError, AttributeError) as e:
            answer({"ok": False, "error": f"bad request: {one_line(e)}"})
            continue
        if op == "quit":
            answer({"ok": True})
            return
        fn = getattr(backend, f"op_{op}", None)
        if fn is None:
            answer({"ok": False, "error": f"{backend.framework} worker: unknown op {op!r}"})
            continue
        try:
            ans = {"ok": True, **fn(**req)}
        except Unsupported as e:
            traceback.print_exc(file=sys.stderr)
            ans = {"ok": False, "error": str(e)[:500], "unsupported": True}
        except Exception as e:  # reported to the parent in one line; traceback in the log
            traceback.print_exc(file=sys.stderr)
            ans = {"ok": False, "error": one_line(e)}
        answer(ans)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hobs_jax.bench.worker FRAMEWORK", file=sys.stderr)
        return 2
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on goes to the log, not into the protocol
    sys.stdout = sys.stderr
    _pin_threads(int(os.environ.get("HOBS_BENCH_THREADS", "0") or 0))

    def answer(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        backend = make_backend(argv[0])
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        # Answer the first request with the reason, so the parent reports it in one line.
        sys.stdin.readline()
        answer({"ok": False, "error": f"{argv[0]} worker cannot start: {one_line(e)}"})
        return 1
    serve(backend, sys.stdin, answer)
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: the backends subclass
    # (and raise) the classes of hobs_jax.bench.worker, and serve() must catch those.
    from hobs_jax.bench.worker import main as _main

    sys.exit(_main())
