"""The autotune cache of ``bell_matmul``: the measured best backend and tile sizes per
problem, and the best block size per dense problem, on disk.

Its own module because both sides read it: ``kernels.ops`` looks configs up at matmul
time, and ``kernels.autotune`` (which times ``kernels.ops``) writes them; with the cache
in ``autotune`` the two modules imported each other.

Cache: a JSON file at ``$HOBS_JAX_AUTOTUNE_CACHE`` or
``~/.cache/hobs_jax/autotune.json``::

    {"version": 1,
     "configs": {problem_key: {"config": {...KernelConfig...}, "ms": 1.23,
                               "timings": {"<config json>": ms, ...}}},
     "blocks":  {block_key: {"block": 64, "ms": ..., "timings": {"16": ms, ...}}}}

Writes are atomic (temporary file in the same directory + ``os.replace``) and
merge with what is on disk, so concurrent tuners lose at most their own entry.
A missing cache means defaults; an unreadable or malformed one gives a
``RuntimeWarning`` and defaults (never an exception at matmul time).

Keys include ``jax.devices()[0].device_kind``, the dtype, M rounded up to a power
of two (batch sizes in one bucket share an entry) and the exact K, N, b, S, T.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from kernels.block_ell import BlockELLMeta, check_block_size
from kernels.config import KernelConfig, device_kind

__all__ = [
    "ENV_VAR",
    "block_key",
    "bucket_m",
    "cache_path",
    "load_cache",
    "lookup",
    "lookup_block",
    "problem_key",
    "store",
    "update_cache",
]

ENV_VAR = "HOBS_JAX_AUTOTUNE_CACHE"
_VERSION = 1
_memo: dict[str, tuple[float, dict]] = {}


def cache_path() -> Path:
    """Path of the autotune cache (env var, else ~/.cache/hobs_jax/autotune.json)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hobs_jax" / "autotune.json"


def bucket_m(m: int) -> int:
    """M rounded up to a power of two: batch sizes in one bucket share an entry."""
    return 1 << max(0, int(m) - 1).bit_length()


def problem_key(m: int, meta: BlockELLMeta, slots: int, dtype: Any,
                device: str | None = None) -> str:
    """Cache key of one ``bell_matmul`` problem."""
    k, n = meta.shape
    return (f"{device or device_kind()}|{jnp.dtype(dtype).name}|m{bucket_m(m)}|k{k}|n{n}"
            f"|b{meta.block}|s{slots}|t{meta.col_slots}")


def _empty() -> dict:
    return {"version": _VERSION, "configs": {}, "blocks": {}}


def load_cache(path: Path | None = None) -> dict:
    """Reads the cache; missing -> empty, corrupt -> RuntimeWarning and empty."""
    path = Path(path) if path is not None else cache_path()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return _empty()
    memo = _memo.get(str(path))
    if memo is not None and memo[0] == mtime:
        return memo[1]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != _VERSION or \
                not isinstance(data.get("configs", {}), dict) or \
                not isinstance(data.get("blocks", {}), dict):
            raise ValueError("unexpected structure")
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        warnings.warn(f"autotune cache {path} is unreadable ({err}); using defaults",
                      RuntimeWarning, stacklevel=2)
        data = _empty()
    data.setdefault("configs", {})
    data.setdefault("blocks", {})
    _memo[str(path)] = (mtime, data)
    return data


def lookup(key: str, path: Path | None = None) -> KernelConfig | None:
    """Cached ``KernelConfig`` for ``key`` or None (bad entries warn)."""
    entry = load_cache(path)["configs"].get(key)
    if entry is None:
        return None
    try:
        return KernelConfig.from_dict(entry["config"])
    except (KeyError, TypeError, ValueError) as err:
        warnings.warn(f"autotune cache entry {key!r} is invalid ({err}); using defaults",
                      RuntimeWarning, stacklevel=2)
        return None


def update_cache(update: Callable[[dict], None], path: Path | None) -> None:
    """Applies ``update`` to a private copy of the cache and writes it atomically."""
    path = Path(path) if path is not None else cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rewrite a corrupt file
        data = json.loads(json.dumps(load_cache(path)))  # private copy
    update(data)
    fd, tmp = tempfile.mkstemp(prefix=".autotune.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _memo.pop(str(path), None)


def store(key: str, config: KernelConfig, ms: float,
          timings: dict[str, float] | None = None, path: Path | None = None) -> None:
    """Atomically records the best ``config`` for ``key``."""
    def update(data):
        data["configs"][key] = {"config": config.to_dict(), "ms": float(ms),
                                "timings": dict(timings or {})}
    update_cache(update, path)


def block_key(m: int, k: int, n: int, sparsity: float, dtype: Any) -> str:
    """Cache key of one dense problem whose block size is tuned."""
    return f"{device_kind()}|{jnp.dtype(dtype).name}|m{bucket_m(m)}|k{k}|n{n}|sp{sparsity:.4f}"


def lookup_block(m: int, k: int, n: int, sparsity: float, dtype: Any,
                 path: Path | None = None) -> int | None:
    """Cached best block size for a dense problem, or None."""
    entry = load_cache(path)["blocks"].get(block_key(m, k, n, sparsity, dtype))
    try:
        return None if entry is None else check_block_size(entry["block"])
    except (KeyError, TypeError, ValueError):
        return None
