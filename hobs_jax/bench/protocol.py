"""The parent's side of the worker protocol: one child process per framework.

A worker is ``python -m hobs_jax.bench.worker FRAMEWORK``. The parent writes one JSON
object per line to its stdin (``{"op": ..., ...}``) and reads one JSON line back per
request, on the worker's original stdout (the worker points its own fd 1 at its log, so
nothing a library prints can corrupt the protocol). Answers are ``{"ok": true, ...}`` or
``{"ok": false, "error": "<one line>"}``. Arrays travel as ``.npy`` files in the run's
scratch directory. Requests are answered in order, one at a time: while the parent waits
for one worker, every other worker is idle, so timings in different frameworks never
overlap.

Ops (every worker): ``hello`` (versions and what the framework sees: devices,
providers), ``prepare`` (build one configuration, run it once for the verification output
and ``warmup`` more times; compile time and memory), ``time`` (``n`` timed calls of a
prepared configuration after ``warm`` untimed ones; per-call milliseconds), ``release``,
``quit``. The ``jax`` worker also answers ``probe`` (load or materialize a model, check
the batch sizes, Flax reference outputs) and the ``export`` worker ``export_onnx``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FRAMEWORKS = ("jax", "onnxruntime", "torch", "export")


class WorkerError(RuntimeError):
    """A worker answered ``ok: false`` or died; the message is one line. ``unsupported``:
    the framework cannot take the model at all (its rows are skipped, not failed)."""

    def __init__(self, message: str, unsupported: bool = False):
        super().__init__(message)
        self.unsupported = unsupported


def _package_root() -> str:
    import hobs_jax

    return os.path.dirname(os.path.dirname(os.path.abspath(hobs_jax.__file__)))


def worker_env(framework: str, *, threads: int, gpu: bool) -> dict[str, str]:
    """The environment of a worker: this checkout first on ``PYTHONPATH`` (the child
    imports the same hobs_jax as the parent), thread counts, and JAX kept off the GPU
    unless GPU rows are wanted (and never preallocating it, so that frameworks share it);
    no persistent XLA compilation cache."""
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([_package_root()] + inherited)
    env["HOBS_BENCH_THREADS"] = str(threads)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    if threads == 1 and framework == "jax":  # XLA:CPU's Eigen pool off: the call runs on one thread
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile_s is a real compile, never a cache load
    if framework != "jax" or not gpu:
        env["JAX_PLATFORMS"] = "cpu"  # the torch/ORT/export workers only read checkpoints with JAX
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Worker:
    """A running worker process (use as a context manager, or call :meth:`close`)."""

    def __init__(self, framework: str, *, threads: int = 0, gpu: bool = False, log_path: str):
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown worker framework {framework!r}; use {', '.join(FRAMEWORKS)}")
        self.framework = framework
        self.log_path = log_path
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "hobs_jax.bench.worker", framework],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=worker_env(framework, threads=threads, gpu=gpu), text=True,
                                     bufsize=1)

    def _last_log_line(self) -> str:
        try:
            with open(self.log_path) as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            return lines[-1] if lines else "(empty log)"
        except OSError:
            return "(no log)"

    def call(self, op: str, **kw) -> dict:
        """Send one request and return the answer; ``WorkerError`` (one line) when the
        worker reports an error or has died."""
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.framework} worker has exited (code {self.proc.returncode}): "
                              f"{self._last_log_line()}")
        assert self.proc.stdin is not None and self.proc.stdout is not None  # started with PIPEs
        try:
            self.proc.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.wait(timeout=30)
            raise WorkerError(f"{self.framework} worker died during {op!r} (exit code {code}): "
                              f"{self._last_log_line()} (log: {self.log_path})")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise WorkerError(ans.get("error") or f"{self.framework} worker: {op} failed",
                              unsupported=bool(ans.get("unsupported")))
        return ans

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except WorkerError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is None:
                continue
            try:
                f.close()
            except OSError:
                pass
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
