"""The machine record: what every experiment figure was measured on.

One definition for the whole repository, built on :mod:`hobs_jax.bench.sysinfo` (CPU model
and vector ISA, cores, load, GPUs, package versions, git commit), plus the two short forms
experiments need: :func:`describe` (one line for a report) and :func:`device_key` (what
must be equal for two rows to share a table: latency and even float rounding depend on
the CPU's ISA and on the accelerator).

    m = record()                # dict, JSON-able
    describe(m)                 # 'AMD EPYC 9R14 (avx512f), 2 cores, load 1.20; no GPU'
    device_key(m)               # 'cpu:AMD EPYC 9R14:avx512f'
"""

from __future__ import annotations

from hobs_jax.bench import sysinfo

__all__ = ["cpu_model", "describe", "device_key", "load_1min", "load_average", "record"]


def record(*, packages: tuple[str, ...] = sysinfo.PACKAGES + ("torch-pruning", "scipy")) -> dict:
    """The full record (:func:`hobs_jax.bench.sysinfo.machine`) with ``device``
    (:func:`device_key`) added; reads no framework, so it is safe in any process."""
    m = sysinfo.machine()
    m["versions"] = sysinfo.versions(packages)
    m["device"] = device_key(m)
    return m


def device_key(m: dict) -> str:
    """``gpu:<name>`` for the first GPU, else ``cpu:<model>:<isa>``."""
    gpus = m.get("gpus") or []
    if gpus:
        return f"gpu:{gpus[0]['name']}"
    c = m["cpu"]
    return f"cpu:{c['model']}:{c['isa']}"


def describe(m: dict | None = None) -> str:
    """One line: CPU model (ISA), cores, load average, GPUs."""
    return sysinfo.describe(m or record())


def cpu_model() -> str:
    """The CPU's model name with its widest vector ISA: ``AMD EPYC 9R14 (avx512f)``."""
    c = sysinfo.cpu_info()
    return f"{c['model']} ({c['isa']})"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    return sysinfo.load_average()


def load_1min() -> float | None:
    """The 1-minute load average, recorded beside timings taken on a shared machine (None
    where the OS has none)."""
    la = sysinfo.load_average()
    return la[0] if la is not None else None
