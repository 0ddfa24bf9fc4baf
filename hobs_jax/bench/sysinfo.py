"""What a benchmark figure was measured on: CPU model and vector ISA, cores, load, GPUs,
software versions and the git commit of the code.

Everything here is read without importing a framework (``/proc/cpuinfo``,
``nvidia-smi``, ``importlib.metadata``), so the parent process of a suite run stays
free of torch, onnxruntime and JAX's device initialization; each worker reports what its
own framework sees in its ``hello`` answer.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess

# The vector extensions that decide CPU kernel speed, widest first (x86 flags, then Arm).
ISA_FLAGS = ("amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma", "avx", "sse4_2",
             "sve", "asimd")
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "torchvision", "onnx", "onnxruntime",
            "onnxruntime-gpu", "torch-tensorrt", "tensorrt")


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features") and key not in out:
                    out[key] = val.strip()
    except OSError:
        pass
    return out


def cpu_info() -> dict:
    """``{"model", "isa", "flags", "cores", "schedulable_cores"}``; ``isa`` is the widest
    vector extension present (``avx512f``, ``avx2``, ...), ``flags`` every one of
    :data:`ISA_FLAGS` present."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    present = [f for f in ISA_FLAGS if f in flags]
    vector = [f for f in present if f in ("avx512f", "avx2", "avx", "sse4_2", "sve", "asimd")]
    try:
        sched = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        sched = os.cpu_count()
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "isa": vector[0] if vector else "unknown", "flags": present,
            "cores": os.cpu_count(), "schedulable_cores": sched}


def gpus() -> list[dict]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them (``[]`` when there is none or no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory_mib": int(float(parts[1])) if parts[1] else None,
                         "driver": parts[2]})
    return rows


def has_gpu() -> bool:
    return bool(gpus())


def versions(packages=PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (``None`` when not installed), read from the
    package metadata without importing anything."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def git_commit() -> dict:
    """``{"commit", "dirty"}`` of the checkout holding this package (``None`` outside git)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        st = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """The full record stored with every suite result."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 2 ** 20, 1)
                    break
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "os": platform.platform(), "cpu": cpu_info(),
            "memory_gib": mem, "gpus": gpus(), "load_average": load_average(),
            "versions": versions(), "git": git_commit()}


def describe(m: dict) -> str:
    """One line: ``Intel Xeon ... (avx512f), 2 cores, load 1.2; no GPU``."""
    c = m["cpu"]
    gpu = ", ".join(g["name"] for g in m.get("gpus") or []) or "no GPU"
    load = m.get("load_average")
    return (f"{c['model']} ({c['isa']}), {c['schedulable_cores']} cores"
            + (f", load {load[0]:.2f}" if load else "") + f"; {gpu}")
