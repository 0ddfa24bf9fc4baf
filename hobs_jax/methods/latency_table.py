"""A network's latency table (:mod:`hobs_jax.allocation.latency`): which Conv/Dense layer
reads and writes which channel group (from the traced layers and the graph, as the OBS
parts see them), each layer timed at a grid of channel counts in XLA or ONNX Runtime at
the serving batch size, cached on disk per model, widths, runtime, batch, threads and
device.

    table = cached_table("resnet56", variables, (1, 28, 28, 1), runtime="onnxruntime", batch=64)
    prune("hobs", "resnet56", variables, target=0.5, metric="latency", latency=table, calib=calib)

``benchmarks/latency_lut.py`` is its command line. The rest of the network (BatchNorm,
activations, adds, pooling) is the dense network's time less its layers' in XLA (jitted
here); in ONNX Runtime, which fuses BatchNorm and the activations into the convolutions,
it is taken as 0 unless ``dense_seconds`` (e.g. the dense p50 of ``python -m
hobs_jax.bench``) is given.
"""

from __future__ import annotations

import time

from hobs_jax.allocation import latency as L


def layer_table(model, variables, input_shape, graph) -> list[dict]:
    """One entry per Conv/Dense layer: path, kind, spatial input, conv params, the
    prunable group on its input/output channels (-1: fixed) and full channel counts."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from hobs_jax.methods.obs_groups import group_roles
    from hobs_jax.stats.layers import intercepting, trace_layers

    infos = trace_layers(model, variables, input_shape)
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {}

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


def _dense_seconds_xla(model, variables, batch: int, input_shape, rounds: int, iters: int, clock: str) -> float:
    """The jitted dense network's time, here (CPU time of this process when ``clock='cpu'``)."""
    import jax
    import jax.numpy as jnp

    from hobs_jax.allocation.alignment import time_calls

    x = jnp.zeros((batch,) + tuple(input_shape[1:]), jnp.float32)
    v = jax.device_put(variables)
    f = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile()
    clk = time.process_time if clock == "cpu" else time.perf_counter
    return time_calls({"dense": lambda: jax.block_until_ready(f(v, x))}, rounds=rounds, iters=iters,
                      clock=clk)["dense"] / 1e3


def measure_table(model, variables=None, input_shape=None, *, runtime: str = "xla", batch: int = 1,
                  points: int = 4, quantum: int = 1, rounds: int = 3, iters: int = 5, threads: int = 0,
                  clock: str = "wall", dense_seconds: float | None = None, in_process: bool = False) -> dict:
    """The latency table of a network at its widths (module doc).

    ``model``: a zoo name (built at the widths of ``variables``), a zoo, linen or NNX
    module, or a :class:`~hobs_jax.models.Prunable`; ``input_shape`` [1, H, W, C]. Every
    layer on a prunable group is timed at ``points`` counts per prunable channel axis
    (:func:`~hobs_jax.allocation.latency.count_grid`, rounded to ``quantum``) in
    ``runtime`` at ``batch`` with ``threads`` cores (0: all), by the wall clock or (``clock='cpu'``,
    one thread) the worker's CPU time."""
    from hobs_jax.graph import as_prunable, graph_of

    if points < 2:
        raise ValueError(f"points={points!r}: a latency grid needs >= 2 counts per axis")
    shape = None if input_shape is None else (1,) + tuple(input_shape[1:])
    p = as_prunable(model, variables, shape)
    graph = graph_of(p)
    t0 = time.perf_counter()
    entries = layer_table(p.module, p.variables, p.input_shape, graph)
    prunable = {g.id for g in graph.prunable}
    for e in entries:
        e["cin_grid"] = count_grid_for(e["cin"], e["in_group"] in prunable, points, quantum)
        e["cout_grid"] = ([e["cout"]] if e["kind"] == "depthwise" else
                          count_grid_for(e["cout"], e["out_group"] in prunable, points, quantum))
    entries, overhead = L.measure_layers(entries, runtime, batch=batch, rounds=rounds, iters=iters,
                                         threads=threads, clock=clock, in_process=in_process)
    layers_full = sum(e["seconds"][-1][-1] for e in entries)
    rest_source = "given"
    if dense_seconds is None and runtime == "xla":
        dense_seconds, rest_source = _dense_seconds_xla(p.module, p.variables, batch, p.input_shape, rounds,
                                                        iters, clock), "measured (XLA, jitted network)"
    elif dense_seconds is None:
        dense_seconds, rest_source = layers_full, "not measured (0: fused into the layers)"
    return {"version": L.VERSION, "model": p.label, "input_shape": [1] + list(p.input_shape[1:]),
            "batch": int(batch), "runtime": runtime, "threads": int(threads), "points": int(points),
            "quantum": int(quantum), "clock": clock, "device": L.device_string(), "fingerprint": graph.fingerprint,
            "dense_seconds": float(dense_seconds), "rest_seconds": max(float(dense_seconds) - layers_full, 0.0),
            "rest_source": rest_source, "rest_model": "outputs", "call_overhead_seconds": overhead,
            "seconds_to_build": time.perf_counter() - t0, "layers": entries}


def count_grid_for(full: int, prunable: bool, points: int, quantum: int) -> list[int]:
    """The grid of one channel axis: :func:`~hobs_jax.allocation.latency.count_grid` when
    the axis belongs to a prunable group, else its full count only."""
    return L.count_grid(full, points, quantum) if prunable else [int(full)]


def cached_table(model, variables=None, input_shape=None, *, runtime: str = "xla", batch: int = 1,
                 threads: int = 0, directory: str | None = None, measure: bool = True, **kwargs) -> dict:
    """The cached table of the network for (``runtime``, ``batch``, ``threads``, this
    device) (:func:`hobs_jax.allocation.latency.cache_path`), measured with
    :func:`measure_table` (``kwargs``) and cached when there is none and ``measure``; a
    cached file measured for another model, widths, device or runtime is refused in one
    line. ``measure=False`` and no cached table: one-line ``ValueError``."""
    from hobs_jax.graph import as_prunable, graph_of

    shape = None if input_shape is None else (1,) + tuple(input_shape[1:])
    p = as_prunable(model, variables, shape)
    graph = graph_of(p)
    device = L.device_string()
    path = L.cache_path(p.label, graph.fingerprint, runtime, int(batch), int(threads), device, directory,
                        clock=kwargs.get("clock", "wall"))
    table = L.load_cached(path, model=p.label, input_shape=p.input_shape, fingerprint=graph.fingerprint,
                          runtime=runtime, device=device)
    if table is not None:
        return table
    if not measure:
        raise ValueError(f"no latency table of {p.label} in {runtime} at batch {batch} is cached for this device "
                         f"({path}); measure one (benchmarks/latency_lut.py)")
    table = measure_table(p, runtime=runtime, batch=batch, threads=threads, **kwargs)
    L.save_table(table, path)
    return table


def budget_of(table, task, runtime: str | None = None) -> L.LatencyBudget:
    """A :class:`~hobs_jax.allocation.latency.LatencyBudget` from a table (dict), a path to
    one, or a budget, checked against ``task`` (one line when measured elsewhere)."""
    if isinstance(table, L.LatencyBudget):
        if tuple(table.group_ids) != tuple(task.cost.group_ids):
            raise ValueError("latency budget: built over other groups than the task's cost model")
        L.check_table(table.table, model=task.name, input_shape=task.input_shape,
                      fingerprint=task.graph.fingerprint, runtime=runtime)
        return table
    if isinstance(table, str):
        return L.LatencyBudget.from_file(table, task, runtime=runtime)
    if isinstance(table, dict):
        return L.LatencyBudget.for_task(table, task, runtime=runtime)
    raise ValueError(f"latency={type(table).__name__}: give a latency table (dict), its path or a LatencyBudget")


__all__ = ["budget_of", "cached_table", "count_grid_for", "layer_table", "measure_table"]
