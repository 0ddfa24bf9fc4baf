"""Latency budgets: a per-layer latency table measured in a runtime on a device, and the
budget it defines over kept channel counts, for every allocator (uniform, global, R-SPAR).

MACs are not latency (a 2x MACs cut on ResNet-50 gave 1.35x at batch 64; unaligned widths
make a half-MACs ResNet-20 slower than dense, docs/results/bench_quickstart.md). A table
holds, for every Conv/Dense layer of a network, its time at a grid of (input channels,
output channels) counts, measured in the runtime that will serve the pruned network (XLA
or ONNX Runtime) at the serving batch size, on this device. The budget sums the layers'
times, bilinearly interpolated at each layer's kept (C_in, C_out), plus the rest of the
network (BN, activations, adds, pooling) held constant, as a fraction of the dense sum.

Here: the table format and its checks (:func:`check_table`: one line when it was
measured for another model, input, widths, device or runtime), :class:`LatencyBudget`,
the on-disk cache (:func:`cache_path`, :func:`save_table`, :func:`load_cached`, keyed by
model, graph fingerprint, runtime, batch, threads and device) and the measurement of a
list of layer entries (:func:`measure_layers`, timed with
:func:`hobs_jax.allocation.alignment.time_calls` on the layers of
:func:`~hobs_jax.allocation.alignment.layer_call`, each runtime in a process of its own).
Which layer reads which group comes from the methods room
(:mod:`hobs_jax.methods.latency_table`, which also builds and caches a network's table).

Table (JSON): ``version``, ``model``, ``input_shape`` [1, H, W, C], ``batch``,
``runtime``, ``threads``, ``device`` (:func:`device_string`), ``fingerprint`` (the graph's),
``dense_seconds``, ``rest_seconds``, ``rest_model`` ('outputs': the rest is shared among
the layers by output elements and scales with their kept output channels; absent: a
constant), ``call_overhead_seconds``, ``layers``: per layer
``path``, ``kind``, ``input_shape``, ``kernel``, ``strides``, ``padding``, ``in_group`` /
``out_group`` (-1: fixed), ``cin``, ``cout``, ``cin_grid``, ``cout_grid``, ``seconds``
[len(cin_grid)][len(cout_grid)]. Version-1 tables (R-SPAR's, XLA only) read as
``runtime: 'xla'``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

VERSION = 2
READABLE = (1, 2)
RUNTIMES = ("xla", "onnxruntime")


def device_string() -> str:
    """What a table is valid for: JAX's platform and device kind, and on a CPU the model
    name and core count (``/proc/cpuinfo``)."""
    import jax

    d = jax.devices()[0]
    s = f"{d.platform}:{d.device_kind}"
    if d.platform == "cpu":
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    s += f":{line.split(':', 1)[1].strip()}"
                    break
        except OSError:
            pass
        s += f":{os.cpu_count()}cores"
    return s


def count_grid(full: int, points: int, quantum: int = 1) -> list[int]:
    """``points`` counts from ~10% of ``full`` to ``full`` (ends included, unique); with a
    ``quantum``, the inner counts are rounded to its multiples (the widths an aligned
    allocation uses, so the interpolation runs between aligned points)."""
    out = set()
    for r in np.linspace(0.1, 1.0, points):
        c = max(1, int(round(full * r)))
        if quantum > 1 and c < full:
            c = min(full, max(quantum, int(round(c / quantum)) * quantum))
        out.add(c)
    return sorted(out)


def check_table(table: Mapping, *, model: str, input_shape: Sequence[int], fingerprint: str,
                runtime: str | None = None, device: str | None = None, source: str = "latency table") -> None:
    """One-line ``ValueError`` when ``table`` was not measured for ``model`` at
    ``input_shape`` with the graph ``fingerprint`` (the widths), in ``runtime`` (None: any),
    on ``device`` (None: this one, :func:`device_string`)."""
    if table.get("version") not in READABLE:
        raise ValueError(f"{source}: not a latency table (version {table.get('version')!r}; "
                         f"readable: {', '.join(map(str, READABLE))})")
    if table.get("model") != model:
        raise ValueError(f"{source} was measured for model {table.get('model')!r}, not {model!r}")
    if list(table.get("input_shape", []))[1:] != list(input_shape[1:]):
        raise ValueError(f"{source} was measured at input {table.get('input_shape')}, not {list(input_shape)}")
    if table.get("fingerprint") != fingerprint:
        raise ValueError(f"{source} was measured for other widths of {model} (graph "
                         f"{table.get('fingerprint')} != {fingerprint})")
    here = device if device is not None else device_string()
    if table.get("device") != here:
        raise ValueError(f"{source} was measured on device {table.get('device')!r}, not on this one ({here!r})")
    measured = table.get("runtime", "xla")
    if runtime is not None and measured != runtime:
        raise ValueError(f"{source} was measured in runtime {measured!r}, not in {runtime!r}")


def _interp(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear along one axis (linear extrapolation outside the grid)."""
    if len(grid) == 1:
        return np.broadcast_to(values[..., :1], values.shape[:-1] + (len(x),))[..., :]
    i = np.clip(np.searchsorted(grid, x) - 1, 0, len(grid) - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return values[..., i] * (1 - t) + values[..., i + 1] * t


@dataclasses.dataclass
class LatencyBudget:
    """Sum of the table's layer times at the kept channel counts (module doc), over the
    groups ``group_ids`` with full ``sizes`` [G]. Has the ``ratio(keep, metric)`` /
    ``sizes`` interface of :class:`~hobs_jax.allocation.CostModel`, so the uniform and
    global target searches run in it unchanged."""

    table: dict
    group_ids: tuple
    sizes: np.ndarray
    kind: str = "latency"

    def __post_init__(self):
        pos = {g: i for i, g in enumerate(self.group_ids)}
        rest = float(self.table.get("rest_seconds", 0.0))
        by_outputs = self.table.get("rest_model") == "outputs"
        # 'outputs': the rest (BatchNorm, activations, adds: element-wise work on each layer's
        # outputs) is shared among the layers in proportion to their output elements and
        # shrinks with their kept output channels; linear in C_out, so adding it to the grid
        # keeps the interpolation exact. Otherwise (version-1 tables) it is a constant.
        outs = [self._outputs(e) for e in self.table["layers"]]
        total = float(sum(o * e["cout"] for o, e in zip(outs, self.table["layers"]))) or 1.0
        self._layers = []
        self.paths = tuple(str(e.get("path", i)) for i, e in enumerate(self.table["layers"]))
        for e, o in zip(self.table["layers"], outs):
            pi, po = pos.get(e["in_group"], -1), pos.get(e["out_group"], -1)
            gi, go = np.asarray(e["cin_grid"], np.float64), np.asarray(e["cout_grid"], np.float64)
            sec = np.asarray(e["seconds"], np.float64)
            if by_outputs:
                co = gi[:, None] if e["kind"] == "depthwise" else go[None, :]
                sec = sec + rest * o * co / total
            self._layers.append((pi, po, gi, go, sec, e["kind"] == "depthwise"))
        self.rest = 0.0 if by_outputs else rest
        self.full = self.seconds(np.asarray(self.sizes, np.float64))
        if not self.full > 0:
            raise ValueError("latency table: the dense network's time is not positive (no layer was timed)")

    @staticmethod
    def _outputs(e: Mapping) -> float:
        """Output positions per example of a table entry (its output elements per channel)."""
        spatial = list(e["input_shape"][:-1])
        strides = list(e.get("strides") or [1] * len(spatial))
        if e["kind"] == "dense":
            return float(np.prod(spatial)) if spatial else 1.0
        return float(np.prod([-(-s // max(st, 1)) for s, st in zip(spatial, strides)])) if spatial else 1.0

    @property
    def runtime(self) -> str:
        return self.table.get("runtime", "xla")

    @classmethod
    def from_file(cls, path: str, task, runtime: str | None = None) -> LatencyBudget:
        """Load a table and check it was measured for ``task``'s model, input shape and
        graph, on this device (and in ``runtime`` when given); one-line ``ValueError``
        otherwise."""
        try:
            with open(path) as f:
                table = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"latency table {path}: cannot read it ({e})") from None
        return cls.for_task(table, task, source=path, runtime=runtime)

    @classmethod
    def for_task(cls, table: Mapping, task, source: str = "latency table",
                 runtime: str | None = None) -> LatencyBudget:
        """The budget of ``table`` over ``task``'s cost-model groups, after
        :func:`check_table` against the task."""
        check_table(table, model=task.name, input_shape=task.input_shape, fingerprint=task.graph.fingerprint,
                    runtime=runtime, source=source)
        return cls(dict(table), tuple(task.cost.group_ids), np.asarray(task.cost.sizes))

    def _layer(self, layer, keep: np.ndarray, t: int | None = None, counts: np.ndarray | None = None) -> np.ndarray:
        pi, po, gi, go, sec, dw = layer
        n = 1 if counts is None else len(counts)

        def count(p, full_grid):
            if p < 0:
                return np.full(n, full_grid[-1])
            if counts is not None and p == t:
                return np.asarray(counts, np.float64)
            return np.full(n, keep[p])

        ci = count(pi, gi)
        if dw:
            return _interp(gi, sec[:, 0], ci)
        co = count(po, go)
        rows = _interp(go, sec, co)  # [len(gi), n]
        if len(gi) == 1:
            return rows[0]
        i = np.clip(np.searchsorted(gi, ci) - 1, 0, len(gi) - 2)
        w = (ci - gi[i]) / (gi[i + 1] - gi[i])
        cols = np.arange(n)
        return rows[i, cols] * (1 - w) + rows[i + 1, cols] * w

    def seconds(self, keep) -> float:
        """Predicted time of the network at kept counts ``keep`` [G] (seconds per call)."""
        keep = np.asarray(keep, np.float64)
        return float(sum(self._layer(l, keep)[0] for l in self._layers) + self.rest)

    def layer_seconds(self, keep) -> np.ndarray:
        """[L] each table layer's predicted time (seconds per call, its share of the rest
        included when the table models it per output) at kept counts ``keep`` [G], in the
        order of ``paths``: where a pruned network's time goes, layer by layer."""
        keep = np.asarray(keep, np.float64)
        return np.array([float(self._layer(l, keep)[0]) for l in self._layers])

    def ratio(self, keep, metric: str | None = None) -> float:
        """Kept fraction of the dense network's time (``metric`` is ignored: there is one)."""
        return self.seconds(keep) / self.full

    def ratio_along(self, keep, t, counts) -> np.ndarray:
        """[K] the ratio with ``keep[t]`` replaced by each of ``counts`` [K]."""
        keep = np.asarray(keep, np.float64)
        tot = np.full(len(counts), self.rest)
        for l in self._layers:
            tot = tot + self._layer(l, keep, t, np.asarray(counts, np.float64))
        return tot / self.full

    def saved_per_channel(self, floor) -> np.ndarray:
        """[G] seconds saved per removed channel of each group, averaged from its full size
        down to ``floor`` [G] with every other group full: what a global threshold in
        latency mode divides saliencies by (saliency per second saved). A group whose
        removal saves nothing gets a tiny positive value (its channels are removed last)."""
        full = np.asarray(self.sizes, np.float64)
        floor = np.asarray(floor, np.float64)
        out = np.empty(len(full))
        for i in range(len(full)):
            n = full[i] - floor[i]
            if n <= 0:
                out[i] = 1e-12
                continue
            r = self.ratio_along(full, i, np.array([full[i], floor[i]]))
            saved = float(r[0] - r[1]) * self.full
            out[i] = max(saved / n, 1e-12)
        return out


# -- cache -------------------------------------------------------------------------------------

def cache_dir() -> str:
    """``$HOBS_JAX_CACHE/latency`` or ``~/.cache/hobs_jax/latency``."""
    root = os.environ.get("HOBS_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hobs_jax")
    return os.path.join(root, "latency")


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def cache_path(model: str, fingerprint: str, runtime: str, batch: int, threads: int, device: str,
               directory: str | None = None, clock: str = "wall") -> str:
    """Where the table of ``model`` (graph ``fingerprint``) in ``runtime`` at ``batch`` with
    ``threads`` on ``device`` (timed by ``clock``) is cached: one file per key, so another
    model, widths, runtime, batch or device never reads it."""
    import hashlib

    digest = hashlib.sha256("\n".join([model, fingerprint, runtime, str(batch), str(threads), device]
                                      + ([clock] if clock != "wall" else [])).encode()).hexdigest()[:16]
    name = f"{_safe(model)}_{runtime}_b{batch}_t{threads}{'_' + clock if clock != 'wall' else ''}_{digest}.json"
    return os.path.join(directory or cache_dir(), name)


def save_table(table: Mapping, path: str) -> str:
    """Write ``table`` atomically at ``path``; returns it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)
    return path


def load_cached(path: str, **expect) -> dict | None:
    """The table at ``path`` when it exists (None otherwise), checked with
    :func:`check_table` ``(**expect)``: a file at the key's path that was measured
    elsewhere is refused in one line, never used."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"latency table {path}: cannot read it ({e})") from None
    check_table(table, source=path, **expect)
    return table


# -- measurement -------------------------------------------------------------------------------

def _spec_key(e: Mapping, ci: int, co: int) -> str:
    return json.dumps([e["kind"], list(e["input_shape"][:-1]), list(e.get("kernel", [])), list(e.get("strides", [])),
                       [list(p) for p in e.get("padding", [])], int(ci), int(co)])


def _measure_child(args) -> dict:
    runtime, keys, batch, rounds, iters, threads, clock = args
    import time

    from hobs_jax.allocation import alignment

    if threads > 0:  # before any framework starts its thread pool
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:threads])
        if threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    calls = {}
    for key in keys:
        kind, spatial, kernel, strides, padding, ci, co = json.loads(key)
        calls[key] = alignment.layer_call(runtime, kind=kind, batch=batch, cin=ci, cout=co, spatial=spatial,
                                          kernel=kernel, strides=strides, padding=padding, threads=threads)
    calls["__empty__"] = alignment.empty_call(runtime, threads)
    return alignment.time_calls(calls, rounds=rounds, iters=iters,
                                clock=time.process_time if clock == "cpu" else time.perf_counter)


def measure_layers(entries: Sequence[dict], runtime: str, *, batch: int, rounds: int = 3, iters: int = 5,
                   threads: int = 0, clock: str = "wall", in_process: bool = False) -> tuple[list[dict], float]:
    """Time every entry (with ``cin_grid`` / ``cout_grid`` set) at every grid point in
    ``runtime`` at ``batch``: (entries with ``seconds``, per-call overhead in seconds).
    ``clock='cpu'`` (with ``threads=1``) times the process' CPU time, as the benchmark
    suite's ``--clock cpu``: robust on a shared machine.

    Layers of the same shape are timed once (a ResNet's blocks repeat); the layers are
    interleaved over ``rounds`` (:func:`~hobs_jax.allocation.alignment.time_calls`, the
    minimum of the round medians) in a fresh process pinned to ``threads`` cores (0: all;
    ``in_process``: here), and each time is less the time of an empty call in the same
    runtime (a layer timed alone pays dispatch that it does not pay inside a network)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"latency tables are measured in {', '.join(RUNTIMES)}, not {runtime!r}")
    if batch < 1:
        raise ValueError(f"batch={batch!r}: must be >= 1")
    if clock not in ("wall", "cpu") or (clock == "cpu" and threads != 1):
        raise ValueError(f"clock={clock!r}: 'wall', or 'cpu' with threads=1 (CPU time is latency on one core)")
    keys = sorted({_spec_key(e, ci, ci if e["kind"] == "depthwise" else co) for e in entries
                   for ci in e["cin_grid"] for co in e["cout_grid"]})
    args = (runtime, keys, int(batch), int(rounds), int(iters), int(threads), clock)
    if in_process:
        ms = _measure_child(args)
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            ms = pool.apply(_measure_child, (args,))
    overhead = ms.pop("__empty__") / 1e3
    out = []
    for e in entries:
        e = dict(e)
        if e["kind"] == "depthwise":
            e["seconds"] = [[max(ms[_spec_key(e, ci, ci)] / 1e3 - overhead, 0.0)] for ci in e["cin_grid"]]
        else:
            e["seconds"] = [[max(ms[_spec_key(e, ci, co)] / 1e3 - overhead, 0.0) for co in e["cout_grid"]]
                            for ci in e["cin_grid"]]
        out.append(e)
    return out, overhead
