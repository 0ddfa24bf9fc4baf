"""Latency budget: a per-layer latency lookup table measured on the deployment device.

MACs are not latency (a 2x MACs cut on ResNet-50 gave 1.35x at batch 64, see
docs/rspar.md): the table holds, for every Conv/Dense layer of a network (zoo, linen or
NNX), its measured
time at a grid of (input channels, output channels) counts, on the device that will run
the pruned network. The budget sums the layers' times, bilinearly interpolated at each
layer's kept (C_in, C_out), plus the measured rest of the network (BN, activations,
adds, pooling) held constant, as a fraction of the dense network's sum.

:func:`measure_lut` builds the table (``benchmarks/latency_lut.py`` is its CLI);
:meth:`LatencyBudget.from_file` refuses, in one line, a table made for another model,
input shape, graph (widths) or device.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

VERSION = 1


def device_string() -> str:
    """What the table is valid for: platform, device kind and (CPU) model name + cores."""
    d = jax.devices()[0]
    s = f"{d.platform}:{d.device_kind}"
    if d.platform == "cpu":
        import os
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    s += f":{line.split(':', 1)[1].strip()}"
                    break
        except OSError:
            pass
        s += f":{os.cpu_count()}cores"
    return s


def layer_table(model, variables, input_shape, graph) -> list[dict]:
    """One entry per Conv/Dense layer: path, kind, spatial input, conv params, the
    prunable group on its input/output channels (-1: fixed) and full channel counts."""
    from hobs_jax.methods.obs_groups import group_roles
    from hobs_jax.stats.layers import intercepting, trace_layers
    import flax.linen as nn

    infos = trace_layers(model, variables, input_shape)
    shapes = {}

    def on_layer(mod, x, y):
        shapes.setdefault(tuple(mod.path), tuple(x.shape))

    def fwd(v):
        with nn.intercept_methods(intercepting(on_layer)):
            return model.apply(v, jnp.zeros((1,) + tuple(input_shape[1:]), jnp.float32), train=False)

    jax.eval_shape(fwd, variables)
    roles = group_roles(graph, infos)
    in_g, out_g = {}, {}
    for gid, r in roles.items():
        for site in r.consumers:
            in_g[site.layer.path] = gid
        for site in r.producers:
            out_g[site.layer.path] = gid
        for path in r.passthrough:
            in_g[path] = out_g[path] = gid
    out = []
    for path, info in infos.items():
        if info.kind not in ("conv", "dense", "depthwise"):
            continue
        ks = info.kernel_shape
        cin = int(ks[-2]) if info.kind == "conv" else (int(ks[-1]) if info.kind == "depthwise" else info.d_in)
        out.append({"path": "/".join(path), "kind": info.kind, "input_shape": list(shapes[path][1:]),
                    "kernel": [int(k) for k in ks[:-2]] if info.kind != "dense" else [],
                    "strides": list(info.strides), "padding": [list(p) for p in info.padding],
                    "use_bias": bool(info.use_bias),
                    "in_group": int(in_g.get(path, -1)), "out_group": int(out_g.get(path, -1)),
                    "cin": cin, "cout": int(ks[-1])})
    return out


def _layer_fn(entry: dict, cin: int, cout: int, batch: int):
    """(jitted fn, args) computing the layer at ``cin`` -> ``cout`` channels."""
    rng = np.random.default_rng(0)
    shape = list(entry["input_shape"])
    if entry["kind"] == "dense":
        x = jnp.asarray(rng.normal(size=[batch] + shape[:-1] + [cin]).astype(np.float32))
        w = jnp.asarray(rng.normal(size=(cin, cout)).astype(np.float32))
        return jax.jit(lambda x, w: x @ w), (x, w)
    x = jnp.asarray(rng.normal(size=[batch] + shape[:-1] + [cin]).astype(np.float32))
    groups = cin if entry["kind"] == "depthwise" else 1
    if entry["kind"] == "depthwise":
        cout = cin
    w = jnp.asarray(rng.normal(size=tuple(entry["kernel"]) + (cin // groups, cout)).astype(np.float32))
    pad = [tuple(p) for p in entry["padding"]]
    f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, tuple(entry["strides"]), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups))
    return f, (x, w)


def _time(f, args, reps: int) -> float:
    f(*args).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(*args).block_until_ready()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def count_grid(full: int, points: int) -> list[int]:
    """``points`` counts from ~10% of ``full`` to ``full`` (ends included, unique)."""
    return sorted({max(1, int(round(full * r))) for r in np.linspace(0.1, 1.0, points)})


def measure_lut(model, variables, input_shape, *, batch: int = 1, points: int = 4,
                reps: int = 5, progress: bool = True) -> dict:
    """The latency table of a network at its widths (module doc): every layer timed
    (jitted, median of ``reps``, minus the time of an empty jitted call) at ``points`` x
    ``points`` channel counts; the dense network's own time gives the constant rest.

    ``model``: a zoo name (built at the widths of ``variables``), a zoo, linen or NNX
    module, or a :class:`~hobs_jax.models.Prunable` (``variables`` None: its own)."""
    from hobs_jax.graph import as_prunable, graph_of
    from hobs_jax.train import progress as bar

    p = as_prunable(model, variables, (1,) + tuple(input_shape[1:]))
    model, variables = p.module, p.variables
    graph = graph_of(p)
    entries = layer_table(model, variables, input_shape, graph)
    prunable = {g.id for g in graph.prunable}
    # Each layer is timed as its own jitted call; inside the network it pays no dispatch.
    # Subtract the cost of a call that does nothing (a one-element add), else small layers'
    # times are mostly dispatch, which no pruning removes.
    one = jnp.zeros((1,), jnp.float32)
    overhead = _time(jax.jit(lambda a: a + 1.0), (one,), max(reps, 20))
    for e in bar(entries, desc="latency LUT", unit="layer", enabled=progress):
        e["cin_grid"] = count_grid(e["cin"], points) if e["in_group"] in prunable else [e["cin"]]
        e["cout_grid"] = count_grid(e["cout"], points) if e["out_group"] in prunable else [e["cout"]]
        if e["kind"] == "depthwise":
            e["cout_grid"] = [e["cout"]]
        e["seconds"] = [[max(_time(*_layer_fn(e, ci, co, batch), reps) - overhead, 0.0)
                         for co in e["cout_grid"]] for ci in e["cin_grid"]]
    x = jnp.zeros((batch,) + tuple(input_shape[1:]), jnp.float32)
    dense = _time(jax.jit(lambda v, x: model.apply(v, x, train=False)), (jax.device_put(variables), x), reps)
    layers_full = sum(e["seconds"][-1][-1] for e in entries)
    return {"version": VERSION, "model": p.label, "input_shape": [1] + list(input_shape[1:]),
            "batch": batch, "device": device_string(), "jax_version": jax.__version__,
            "fingerprint": graph.fingerprint, "dense_seconds": dense,
            "rest_seconds": max(dense - layers_full, 0.0), "call_overhead_seconds": overhead,
            "layers": entries}


def _interp(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear along one axis (linear extrapolation outside the grid)."""
    if len(grid) == 1:
        return np.broadcast_to(values[..., :1], values.shape[:-1] + (len(x),))[..., :]
    i = np.clip(np.searchsorted(grid, x) - 1, 0, len(grid) - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return values[..., i] * (1 - t) + values[..., i + 1] * t


@dataclasses.dataclass
class LatencyBudget:
    """Sum of the table's layer times at the kept channel counts (module doc).
    ``pos_in`` / ``pos_out``: each layer's group position in ``group_ids`` (-1 fixed)."""

    table: dict
    group_ids: tuple
    sizes: np.ndarray
    kind: str = "latency"

    def __post_init__(self):
        pos = {g: i for i, g in enumerate(self.group_ids)}
        self._layers = []
        for e in self.table["layers"]:
            pi, po = pos.get(e["in_group"], -1), pos.get(e["out_group"], -1)
            self._layers.append((pi, po, np.asarray(e["cin_grid"], np.float64),
                                 np.asarray(e["cout_grid"], np.float64),
                                 np.asarray(e["seconds"], np.float64), e["kind"] == "depthwise"))
        self.rest = float(self.table.get("rest_seconds", 0.0))
        self.full = self.seconds(self.sizes.astype(np.float64))

    @classmethod
    def from_file(cls, path: str, task) -> "LatencyBudget":
        """Load a table and check it was measured for ``task``'s model, input shape and
        graph, on this device (one-line ``ValueError`` otherwise)."""
        try:
            table = json.load(open(path))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"latency table {path}: cannot read it ({e})") from None
        return cls.for_task(table, task, source=path)

    @classmethod
    def for_task(cls, table: Mapping, task, source: str = "latency table") -> "LatencyBudget":
        if table.get("version") != VERSION:
            raise ValueError(f"{source}: not a version-{VERSION} latency table")
        if table.get("model") != task.name:
            raise ValueError(f"{source} was measured for model {table.get('model')!r}, not {task.name!r}")
        if list(table.get("input_shape", []))[1:] != list(task.input_shape[1:]):
            raise ValueError(f"{source} was measured at input {table.get('input_shape')}, not {list(task.input_shape)}")
        if table.get("fingerprint") != task.graph.fingerprint:
            raise ValueError(f"{source} was measured for other widths of {task.name} (graph "
                             f"{table.get('fingerprint')} != {task.graph.fingerprint})")
        here = device_string()
        if table.get("device") != here:
            raise ValueError(f"{source} was measured on device {table.get('device')!r}, not on this one ({here!r})")
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
        keep = np.asarray(keep, np.float64)
        return float(sum(self._layer(l, keep)[0] for l in self._layers) + self.rest)

    def ratio(self, keep) -> float:
        return self.seconds(keep) / self.full

    def ratio_along(self, keep, t, counts) -> np.ndarray:
        keep = np.asarray(keep, np.float64)
        tot = np.full(len(counts), self.rest)
        for l in self._layers:
            tot = tot + self._layer(l, keep, t, np.asarray(counts, np.float64))
        return tot / self.full
