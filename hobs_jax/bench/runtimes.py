"""The runtimes the suite times a network in, found by name.

========================  ==========  =====================================  ===========
name                      framework   how the network gets there              devices
========================  ==========  =====================================  ===========
``xla``                   jax         ``jax.jit`` of the Flax module          cpu, gpu
``onnxruntime``           onnxrt      ``hobs_jax.export.to_onnx``, then an     cpu, gpu
                                      ``InferenceSession`` (CPU provider;
                                      CUDA provider on a GPU)
``torch``                 torch       ``hobs_jax.export.to_torch``, eager     cpu, gpu
``torch-compile``         torch       the same module under ``torch.compile`` cpu, gpu
``tensorrt``              torch or    torch-tensorrt (``ir="dynamo"``) when   gpu
                          onnxrt      installed, else ONNX Runtime's
                                      TensorRT execution provider
========================  ==========  =====================================  ===========

Each framework runs in its own worker process (:mod:`hobs_jax.bench.worker`). A dtype is
part of a configuration: float32 everywhere, bfloat16 in XLA and torch, float16 in
TensorRT and torch on a GPU; a runtime asked for a dtype or device it does not support is
skipped with a one-line reason.
"""

from __future__ import annotations

import dataclasses

from hobs_jax.bench import sysinfo

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "gpu")
# XLA's depthwise-conv modes (hobs_jax.models.depthwise.MODES; repeated here so that the
# suite process, which never imports JAX, can validate the option).
DEPTHWISE_MODES = ("auto", "on", "off")

# Verification bound on max|y - y_flax| / max|y_flax| per dtype: float32 differs from
# Flax's float32 only by summation order; 16-bit runs round every activation (8 bits of
# mantissa for bfloat16, 11 for float16) through tens of layers, so their bounds are
# looser and stated in the results (docs/bench.md gives the measured errors).
TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime: its worker framework(s), what installs it and what it supports.

    Attributes:
      name: the name users pass (``--runtimes xla,onnxruntime``).
      title: for tables and plots.
      modules: import names that must be present (any one of the alternatives in
        ``frameworks``).
      install: the pip command that installs it (for the one-line error).
      dtypes: device -> the dtypes it can run there.
      default_dtypes: device -> what it runs when no dtype is asked for.
    """

    name: str
    title: str
    frameworks: tuple[tuple[str, tuple[str, ...]], ...]  # (framework, needed modules) alternatives
    install: str
    dtypes: dict
    default_dtypes: dict

    def framework(self) -> str | None:
        """The worker framework that will run it here, or None when nothing that runs it
        is installed."""
        for fw, mods in self.frameworks:
            if all(sysinfo.installed(m) for m in mods):
                return fw
        return None

    def check_installed(self) -> str:
        """The framework; a one-line ``ValueError`` naming the package when none is."""
        fw = self.framework()
        if fw is None:
            raise ValueError(f"runtime {self.name!r} is not installed here: {self.install}")
        return fw


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("xla", "XLA", (("jax", ("jax", "flax")),), "pip install jax flax",
            {"cpu": ("float32", "bfloat16"), "gpu": ("float32", "bfloat16", "float16")},
            {"cpu": ("float32",), "gpu": ("float32", "bfloat16")}),
    Runtime("onnxruntime", "ONNX Runtime", (("onnxruntime", ("onnxruntime",)),),
            "pip install onnxruntime (onnxruntime-gpu for the CUDA provider); the ONNX export "
            "needs torch (pip install torch)",
            {"cpu": ("float32",), "gpu": ("float32",)},
            {"cpu": ("float32",), "gpu": ("float32",)}),
    Runtime("torch", "torch eager", (("torch", ("torch",)),), "pip install torch",
            {"cpu": ("float32", "bfloat16"), "gpu": ("float32", "bfloat16", "float16")},
            {"cpu": ("float32",), "gpu": ("float32", "bfloat16")}),
    Runtime("torch-compile", "torch.compile", (("torch", ("torch",)),), "pip install torch",
            {"cpu": ("float32", "bfloat16"), "gpu": ("float32", "bfloat16", "float16")},
            {"cpu": ("float32",), "gpu": ("float32", "bfloat16")}),
    Runtime("tensorrt", "TensorRT", (("torch", ("torch", "torch_tensorrt")),
                                     ("onnxruntime", ("onnxruntime", "tensorrt"))),
            "pip install torch-tensorrt (or onnxruntime-gpu and tensorrt for ONNX Runtime's "
            "TensorRT provider)",
            {"gpu": ("float16", "float32")}, {"gpu": ("float16",)}),
)}

# The frameworks whose workers need an ONNX file of the model.
NEEDS_ONNX = {("onnxruntime", "onnxruntime"), ("tensorrt", "onnxruntime")}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; a one-line error lists the known ones."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def parse_list(text, what: str, known=None) -> tuple[str, ...]:
    """``"a,b"`` or a sequence -> ``("a", "b")`` (empty items dropped, order kept, no
    duplicates); ``known`` restricts the values (one-line error otherwise)."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    out = tuple(dict.fromkeys(s for s in items if s))
    if known is not None:
        for s in out:
            if s not in known:
                raise ValueError(f"unknown {what} {s!r}; use {', '.join(known)}")
    return out


def resolve(names=None) -> tuple[list[tuple[Runtime, str | None]], bool]:
    """``([(runtime, framework or None), ...], explicit)``.

    ``names`` given (a list or comma-separated string): each must be known and installed,
    else a one-line ``ValueError`` says which package installs it. ``None`` or ``"all"``:
    every known runtime, those not installed kept with framework ``None`` (their rows are
    skipped with the install hint).
    """
    if names is None or names == "all" or names == ("all",):
        return [(r, r.framework()) for r in RUNTIMES.values()], False
    picked = parse_list(names, "runtime")
    if not picked:
        raise ValueError("runtimes: empty list; use e.g. 'xla,onnxruntime'")
    return [(get_runtime(n), get_runtime(n).check_installed()) for n in picked], True


def default_devices() -> tuple[str, ...]:
    """``("gpu",)`` when an NVIDIA GPU is visible, else ``("cpu",)``."""
    return ("gpu",) if sysinfo.has_gpu() else ("cpu",)
