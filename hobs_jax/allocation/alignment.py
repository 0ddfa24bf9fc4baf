"""Width alignment: the channel-count quantum a runtime wants, measured from the latency
staircase of a representative layer.

CPU and GPU kernels work on vectors of channels (16 float32 lanes per AVX-512 register,
8 per AVX2 register, 8- or 16-wide tensor-core tiles), so a layer's latency over its output
width ``w`` is a staircase: flat inside a step, rising at multiples of the step, and worse
than flat where the runtime falls back to a generic kernel for widths that are not
multiples (ONNX Runtime's NCHWc convolutions need multiples of 8 on AVX2/AVX-512). A
pruned width one below a step costs as much as the step; one above it, a whole step more.
The *quantum* of a runtime on a device is the step width: keep every pruned group's count
a multiple of it and pruning pays in latency what it saves in MACs.

Three pieces:
- :func:`measure_staircase` times one layer (a 3x3 convolution, a 1x1 convolution or a
  dense layer at a given spatial size, input width and batch) at every output width of a
  range, in XLA or ONNX Runtime, interleaving the widths over rounds (minimum per width);
  :func:`measure_staircases` runs each runtime in a fresh process.
- :func:`pick_quantum` reads the quantum off a staircase (pure): the period of the
  valleys (aligned widths) of the latency curve.
- :func:`quantum_for` is the pure lookup of the quantum for a runtime on a device class
  (``cpu-avx512``, ``cpu-avx2``, ``gpu``); its defaults are the staircases measured in
  docs/results/alignment.md. :func:`cached_quantum` prefers a measurement saved with
  :func:`save_staircases` for this exact device.

Reference: NVIDIA, "Deep Learning Performance Guide: matrix multiplication / convolution
dimension requirements for Tensor Cores" (multiples of 8 in FP16, 16 in INT8); oneDNN's
blocked ``nChw8c``/``nChw16c`` layouts (used by ONNX Runtime's NCHWc transformer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence

import numpy as np

# Runtime names, as in hobs_jax.bench.RUNTIMES (allocation may not import bench).
RUNTIMES = ("xla", "onnxruntime", "torch", "torch-compile", "tensorrt")
MEASURABLE = ("xla", "onnxruntime")
CANDIDATES = (2, 4, 8, 16, 32)
LAYER_KINDS = ("conv3x3", "conv1x1", "dense")

# Measured on the 2-core AVX-512 development CPU, one thread per runtime
# (docs/results/alignment.md, `python benchmarks/alignment_staircase.py`):
# XLA's 3x3 convolutions dip at every multiple of 8, ONNX Runtime's NCHWc kernels step
# at every 16 channels. Rows for other devices come from the same command run there.
MEASURED: dict[tuple[str, str], int] = {("xla", "cpu-avx512"): 8, ("onnxruntime", "cpu-avx512"): 16}

# Where nothing was measured: the vector width of the device class in float32 channels
# (AVX-512: 16 lanes, AVX2: 8) for CPU runtimes, 8 for GPU runtimes (tensor-core tiles in
# 16-bit, NVIDIA's guideline). 8 is the fallback for an unknown device.
FALLBACK: dict[str, int] = {"cpu-avx512": 16, "cpu-avx2": 8, "cpu": 8, "gpu": 8}


def device_class(cpu_flags: Sequence[str] | None = None, gpu_name: str | None = None) -> str:
    """The device class the quanta are keyed by: ``gpu`` when ``gpu_name`` is given, else
    ``cpu-avx512`` / ``cpu-avx2`` / ``cpu`` from the CPU's flags (default: this machine's
    ``/proc/cpuinfo``)."""
    if gpu_name:
        return "gpu"
    if cpu_flags is None:
        flags: set[str] = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    else:
        flags = set(cpu_flags)
    if "avx512f" in flags:
        return "cpu-avx512"
    if "avx2" in flags:
        return "cpu-avx2"
    return "cpu"


def device_id(gpu_name: str | None = None) -> str:
    """What a cached measurement is valid for: the GPU's name, or the CPU's model name with
    its device class and core count (``/proc/cpuinfo``)."""
    if gpu_name:
        return gpu_name
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return f"{model} ({device_class()}, {cores} cores)"


def quantum_for(runtime: str, device: str) -> int:
    """The width quantum of ``runtime`` on device class ``device`` (pure): the measured
    value when there is one (:data:`MEASURED`), else the device class' fallback
    (:data:`FALLBACK`, then the device kind's: ``cpu-...`` -> ``cpu``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if (runtime, device) in MEASURED:
        return MEASURED[(runtime, device)]
    if device in FALLBACK:
        return FALLBACK[device]
    kind = device.split("-", 1)[0]
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"unknown device class {device!r}; use cpu-avx512, cpu-avx2, cpu or gpu")
    return FALLBACK[kind]


# -- staircases --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layer:
    """A representative layer: ``kind`` (conv3x3 | conv1x1 | dense), input ``cin``
    channels at ``spatial`` x ``spatial`` (ignored for dense), ``batch`` examples."""

    kind: str
    cin: int
    spatial: int = 14
    batch: int = 1

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer kind {self.kind!r}: use one of {', '.join(LAYER_KINDS)}")
        for key in ("cin", "spatial", "batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"layer {key}={getattr(self, key)}: must be >= 1")

    def name(self) -> str:
        if self.kind == "dense":
            return f"dense {self.cin}->w, batch {self.batch}"
        return f"{self.kind} {self.cin}->w at {self.spatial}x{self.spatial}, batch {self.batch}"


@dataclasses.dataclass(frozen=True)
class Staircase:
    """Latency (ms, the minimum over rounds of each round's median) of ``layer`` at every
    output width in ``widths``, in ``runtime`` on ``device`` (a device class)."""

    runtime: str
    device: str
    layer: Layer
    widths: tuple[int, ...]
    ms: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "device": self.device, "layer": dataclasses.asdict(self.layer),
                "widths": list(self.widths), "ms": list(self.ms), "quantum": pick_quantum(self.widths, self.ms)}

    @classmethod
    def from_dict(cls, d: dict) -> Staircase:
        return cls(d["runtime"], d["device"], Layer(**d["layer"]), tuple(d["widths"]), tuple(d["ms"]))


def pick_quantum(widths: Sequence[int], ms: Sequence[float], *, candidates=CANDIDATES,
                 jump: float = 0.25, flat: float = 0.05) -> int:
    """The step width of a latency staircase (pure).

    An aligned width ``m`` sits in a valley of the staircase: ``L(m - 1) + L(m + 1) -
    2 L(m)`` (the discrete second difference) is positive there, whether the next width
    starts a new step (a staircase: ``L(m + 1)`` jumps) or the widths around ``m`` leave an
    aligned kernel (``L(m - 1)`` and ``L(m + 1)`` are both slower). A candidate ``q``
    qualifies when the median valley depth at its multiples is at least ``jump * q * slope``
    (``slope``: of a least-squares line through the staircase: a real step, not noise) and
    the median at the odd multiples of ``q / 2`` is at most half of it (else the period is
    ``q / 2``); the quantum is the largest candidate that qualifies. ``1`` when none does
    (latency grows smoothly with the width) or when latency rises by less than ``flat``
    over the whole range (width does not matter there).
    """
    w = np.asarray(widths, np.int64)
    t = np.asarray(ms, np.float64)
    if w.ndim != 1 or w.shape != t.shape or len(w) < 4:
        raise ValueError("pick_quantum: widths and ms must be equal-length sequences of >= 4 points")
    if np.any(np.diff(w) <= 0):
        raise ValueError("pick_quantum: widths must be strictly increasing")
    lat = dict(zip(w.tolist(), t.tolist()))
    slope = float(np.polyfit(w, t, 1)[0])
    if slope <= 0 or (t.max() - t.min()) < flat * t.min():
        return 1
    top = int(w.max())

    def valleys(points) -> list[float]:
        return [lat[p - 1] + lat[p + 1] - 2 * lat[p] for p in points if p - 1 in lat and p + 1 in lat]

    best = 1
    for q in sorted(candidates):
        at = valleys(range(q, top, q))
        half = valleys(range(q // 2, top, q))
        if not at:
            continue
        depth = float(np.median(at))
        if depth >= jump * q * slope and (not half or float(np.median(half)) <= 0.5 * depth):
            best = q
    return best


def width_bound(s: Staircase) -> bool:
    """Whether the layer's latency is mostly width-dependent work (the widest width takes
    at least twice the narrowest): only such staircases say something about kernels; the
    others are dominated by a fixed per-call cost and their steps by noise."""
    return max(s.ms[-3:]) >= 2.0 * min(s.ms[:3])


def combined_quantum(staircases: Sequence[Staircase]) -> int:
    """One quantum for a runtime and device from several layers' staircases: the largest
    ``q`` that divides the quantum of more than half of the width-bound staircases
    (:func:`width_bound`; all of them when none is). A majority, not the least common
    multiple: one noisy layer must not force a coarse quantum on every layer."""
    if not staircases:
        raise ValueError("combined_quantum: no staircases")
    use = [s for s in staircases if width_bound(s)] or list(staircases)
    quanta = [pick_quantum(s.widths, s.ms) for s in use]
    best = 1
    for q in sorted(set(CANDIDATES) | {1}):
        if sum(1 for x in quanta if x % q == 0) * 2 > len(quanta):
            best = max(best, q)
    return best


def layer_call(runtime: str, *, kind: str, batch: int, cin: int, cout: int, spatial: Sequence[int] = (),
               kernel: Sequence[int] = (), strides: Sequence[int] = (), padding: Sequence[Sequence[int]] = (),
               threads: int = 0):
    """A no-argument callable that runs one layer once, synchronously, in ``runtime``
    (``xla`` or ``onnxruntime``, on the CPU): ``kind`` 'conv' (``kernel`` taps, ``strides``,
    ``padding`` [(lo, hi)] per spatial axis, NHWC input ``batch`` x ``spatial`` x ``cin``,
    ``cout`` outputs), 'depthwise' (``cout`` = ``cin``, one filter per channel) or 'dense'
    (``batch`` x ``spatial`` x ``cin`` -> ``cout``, the last axis contracted). Standard
    normal inputs and weights (seed 0): latency does not depend on the values. What the
    staircases and the latency tables (:mod:`hobs_jax.allocation.latency`) time."""
    rng = np.random.default_rng(0)
    spatial, kernel = tuple(int(s) for s in spatial), tuple(int(k) for k in kernel)
    strides = tuple(int(s) for s in strides) or (1,) * len(kernel)
    pads2: tuple[tuple[int, int], ...] = (tuple((int(q[0]), int(q[1])) for q in padding)
                                          or tuple((k // 2, k // 2) for k in kernel))
    padding = pads2
    if kind not in ("conv", "depthwise", "dense"):
        raise ValueError(f"layer_call: kind {kind!r}: use conv, depthwise or dense")
    if kind == "depthwise":
        cout = cin
    x = rng.standard_normal((batch,) + spatial + (cin,), np.float32)
    groups = cin if kind == "depthwise" else 1
    if runtime == "xla":
        import jax
        import jax.numpy as jnp

        if kind == "dense":
            k = jnp.asarray(rng.standard_normal((cin, cout), np.float32))
            f = jax.jit(lambda x, k: x @ k)
        else:
            k = jnp.asarray(rng.standard_normal(kernel + (cin // groups, cout), np.float32))
            nd = len(kernel)
            dims = ("N" + "HWD"[:nd] + "C", "HWD"[:nd] + "IO", "N" + "HWD"[:nd] + "C")
            f = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, strides, pads2, dimension_numbers=dims,
                                                                  feature_group_count=groups))
        xd = jnp.asarray(x)
        f = f.lower(xd, k).compile()
        return lambda: f(xd, k).block_until_ready()
    if runtime != "onnxruntime":
        raise ValueError(f"layer_call: runtime {runtime!r} is not measurable here; use {', '.join(MEASURABLE)}")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if kind == "dense":
        w = rng.standard_normal((cin, cout), np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        feed_shape, out_shape = x.shape, list(x.shape[:-1]) + [cout]
    else:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))  # NCHW, as torch exports it
        w = rng.standard_normal((cout, cin // groups) + kernel, np.float32)
        pads = [p[0] for p in padding] + [p[1] for p in padding]
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), pads=pads,
                                strides=list(strides), group=groups)
        feed_shape = x.shape
        out = [(s + p[0] + p[1] - k) // st + 1 for s, p, k, st in zip(spatial, padding, kernel, strides)]
        out_shape = [batch, cout] + out
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(feed_shape))
    graph = helper.make_graph([node], "layer", [x_info],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return lambda: sess.run(None, feed)


def empty_call(runtime: str, threads: int = 0):
    """A call that does (almost) nothing in ``runtime``: its time is the per-call overhead
    (dispatch, session bookkeeping) that a layer timed alone pays and the same layer inside
    a network does not."""
    if runtime == "xla":
        import jax
        import jax.numpy as jnp

        one = jnp.zeros((1,), jnp.float32)
        f = jax.jit(lambda a: a + 1.0).lower(one).compile()
        return lambda: f(one).block_until_ready()
    return layer_call(runtime, kind="dense", batch=1, cin=1, cout=1, threads=threads)


def time_calls(calls, *, rounds: int = 5, iters: int = 10, clock=time.perf_counter) -> dict:
    """{key: ms} for a mapping of no-argument callables: two untimed calls each, then
    ``rounds`` rounds in which every callable is timed ``iters`` times, one after the other
    (order alternating between rounds, so a slow phase of a shared machine hits all of
    them); a callable's latency is the smallest of its round medians. The one timer of the
    staircases and the latency tables."""
    keys = list(calls)
    for k in keys:  # first calls (allocation, kernel selection) are not timed
        calls[k]()
        calls[k]()
    best = {k: math.inf for k in keys}
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            fn = calls[k]
            ts = []
            for _ in range(iters):
                t0 = clock()
                fn()
                ts.append((clock() - t0) * 1e3)
            best[k] = min(best[k], float(np.median(ts)))
    return best


def _staircase_call(runtime: str, layer: Layer, width: int, threads: int):
    if layer.kind == "dense":
        return layer_call(runtime, kind="dense", batch=layer.batch, cin=layer.cin, cout=width, threads=threads)
    ks = 3 if layer.kind == "conv3x3" else 1
    return layer_call(runtime, kind="conv", batch=layer.batch, cin=layer.cin, cout=width,
                      spatial=(layer.spatial, layer.spatial), kernel=(ks, ks), threads=threads)


def measure_staircase(runtime: str, layer: Layer, widths: Sequence[int], *, rounds: int = 5,
                      iters: int = 10, threads: int = 0, device: str | None = None) -> Staircase:
    """Time ``layer`` at every output width in ``widths`` in ``runtime`` (``xla`` or
    ``onnxruntime``, on this machine's CPU or, for XLA, its default device), in this
    process. Each round times every width ``iters`` times (widths interleaved, order
    alternating between rounds); a width's latency is the smallest of its round medians."""
    if runtime not in MEASURABLE:
        raise ValueError(f"measure_staircase: runtime {runtime!r} is not measurable here; use "
                         f"{', '.join(MEASURABLE)}")
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1 or any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError("measure_staircase: widths must be increasing positive ints")
    calls = {w: _staircase_call(runtime, layer, w, threads) for w in widths}
    best = time_calls(calls, rounds=rounds, iters=iters)
    return Staircase(runtime, device or device_class(), layer, widths, tuple(best[w] for w in widths))


def _measure_in_child(args) -> dict:
    runtime, layer, widths, kw = args
    threads = kw.get("threads", 0)
    if threads > 0:  # before any framework starts its thread pool
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:threads])
        if threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return measure_staircase(runtime, Layer(**layer), widths, **kw).to_dict()


def measure_staircases(runtimes: Sequence[str], layers: Sequence[Layer], widths: Sequence[int], *,
                       rounds: int = 5, iters: int = 10, threads: int = 1) -> list[Staircase]:
    """:func:`measure_staircase` for every runtime x layer, each runtime in a fresh
    process of its own (frameworks in one process disturb each other's timings), pinned
    to ``threads`` cores (0: all).

    One thread by default: the quantum is a property of a core's kernels (vector width,
    blocked layouts), and a single-threaded staircase stays clean on a machine shared with
    other jobs, where idle-spinning thread pools make multi-threaded timings erratic
    (docs/results/alignment.md).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = []
    for runtime in runtimes:
        jobs = [(runtime, dataclasses.asdict(layer), list(widths),
                 {"rounds": rounds, "iters": iters, "threads": threads}) for layer in layers]
        with ctx.Pool(1) as pool:
            out += [Staircase.from_dict(d) for d in pool.map(_measure_in_child, jobs)]
    return out


# -- cache -------------------------------------------------------------------------------------

def cache_dir() -> str:
    """``$HOBS_JAX_CACHE/alignment`` or ``~/.cache/hobs_jax/alignment``."""
    root = os.environ.get("HOBS_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hobs_jax")
    return os.path.join(root, "alignment")


def _device_key(device_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id)[:120]


def save_staircases(staircases: Sequence[Staircase], ident: str, directory: str | None = None) -> str:
    """Cache ``staircases`` of one device (``ident``: its :func:`device_id`) and their
    per-runtime quantum; returns the file."""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    runtimes = sorted({s.runtime for s in staircases})
    doc = {"version": 1, "device_id": ident, "quantum": {r: combined_quantum([s for s in staircases if s.runtime == r])
                                                             for r in runtimes},
           "staircases": [s.to_dict() for s in staircases]}
    path = os.path.join(directory, _device_key(ident) + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def cached_quantum(runtime: str, device: str, ident: str, directory: str | None = None) -> tuple[int, str]:
    """``(quantum, source)``: the quantum of the staircases measured on the device
    ``ident`` (a :func:`device_id`, cached by :func:`save_staircases`; recomputed with
    :func:`combined_quantum`) when there are some for ``runtime`` (source ``"measured
    here"``), else :func:`quantum_for` ``(runtime, device)`` (source ``"default for
    <device>"``)."""
    path = os.path.join(directory or cache_dir(), _device_key(ident) + ".json")
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("version") == 1 and doc.get("device_id") == ident:
            mine = [Staircase.from_dict(d) for d in doc.get("staircases", []) if d.get("runtime") == runtime]
            if mine:
                return combined_quantum(mine), "measured here"
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return quantum_for(runtime, device), f"default for {device}"


# -- the quantum an allocation uses ------------------------------------------------------------

def parse_align(align) -> str | int:
    """``align`` as ``'off'``, ``'auto'`` or a positive int (from an int or a string of
    digits); one-line error otherwise."""
    if isinstance(align, bool):
        raise ValueError(f"align={align!r}: use 'off', 'auto' or a positive int")
    if isinstance(align, int) or (isinstance(align, str) and align.strip().isdigit()):
        q = int(align)
        if q < 1:
            raise ValueError(f"align={align!r}: a quantum must be >= 1")
        return q
    if align in ("off", "auto"):
        return align
    raise ValueError(f"align={align!r}: use 'off', 'auto' or a positive int (a width quantum)")


def runtimes_quantum(runtimes: Sequence[str], gpu_name: str | None = None,
                     directory: str | None = None) -> tuple[int, str]:
    """``(quantum, source)`` that suits every runtime of ``runtimes`` on this machine (its
    GPU when ``gpu_name``): the least common multiple of their quanta
    (:func:`cached_quantum`: measured on this device when cached, else :func:`quantum_for`),
    so a width aligned for one is aligned for all."""
    if not runtimes:
        raise ValueError("runtimes_quantum: no runtimes")
    device = "gpu" if gpu_name else device_class()
    ident = device_id(gpu_name)
    q, parts = 1, []
    for r in runtimes:
        qr, source = cached_quantum(r, device, ident, directory)
        q = q * qr // math.gcd(q, qr)
        parts.append(f"{r} {qr} ({source})")
    return q, ", ".join(parts)
