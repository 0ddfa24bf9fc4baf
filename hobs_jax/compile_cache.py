"""JAX's persistent compilation cache for command-line runs.

XLA:CPU compiles every jitted step of a run afresh in each new process; for H-OBS on the
Fashion-MNIST ResNet-56 that is ~27 of the 52 s of a first call on the 2-core development
CPU. With the persistent cache (``jax_compilation_cache_dir``) a later process that runs
the same shapes loads the executables instead: measured there (docs/results/hobs_cost.md),
the first H-OBS call in a new process took 34.4 s with a populated cache instead of 52.3 s
(``benchmarks/hobs_cost.py``, "new process, cache populated"; 25.5 s once compiled in
the same process). Tracing is not cached.

The library never turns this on by itself (a process-wide setting); the entry points do
(``python -m hobs_jax.main --compile_cache=DIR``, default :func:`default_dir`; an empty
value turns it off), and a ``JAX_COMPILATION_CACHE_DIR`` already set in the environment
wins over the default.
"""

from __future__ import annotations

import os

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"


def default_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hobs_jax/xla``
    (``~/.cache/hobs_jax/xla``)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hobs_jax", "xla")


def enable(path: str | None) -> str | None:
    """Cache every compiled executable under ``path`` (created if missing; even fast
    compiles, since a run has hundreds of small ones). ``None`` or ``''``: leave the
    cache off. Returns the directory used. One-line ``ValueError`` if ``path`` exists
    and is not a writable directory."""
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"compile cache {path!r}: cannot create the directory ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"compile cache {path!r}: the directory is not writable")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
