"""Channel-graph discovery time: ``hobs_jax.graph.build_graph`` (abstract jaxpr trace) vs
Torch-Pruning's ``DependencyGraph().build_dependency`` (a real forward pass), each
(framework, model) in its own process; median of ``repeats`` calls after a warm-up whose
time is reported as ``first``; the ratio is Torch-Pruning's median over ours."""

from __future__ import annotations

import statistics
import time

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "graph", "benchmarks/graph.py"
MODELS = ("resnet50", "efficientnet_b0")
LEGACY_DEVICE = "cpu:AMD EPYC:unrecorded"


def ours(name: str, repeats: int) -> dict:
    import jax

    from hobs_jax import models
    from hobs_jax.graph import build_graph

    model = models.build(name)
    shape = models.input_shape(name, 1)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        g = build_graph(model, variables, shape)
        times.append(time.perf_counter() - t)
    return {"first_s": times[0], "median_s": statistics.median(times[1:]), "groups": len(g.prunable),
            "channels": g.channels}


def torch_pruning(name: str, repeats: int) -> dict:
    import torch
    import torch_pruning as tp
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        times.append(time.perf_counter() - t)
    groups = list(dg.get_all_groups(ignored_layers=[last], root_module_types=[torch.nn.Conv2d, torch.nn.Linear]))
    return {"first_s": times[0], "median_s": statistics.median(times[1:]), "groups": len(groups),
            "channels": sum(len(grp[0][1]) for grp in groups)}


def measure(models=MODELS, repeats: int = 5, *, device: str, source: str) -> list[dict]:
    from hobs_jax.experiments.isolate import call

    rows = []
    for name in models:
        o = call(f"{__name__}:ours", name=name, repeats=repeats)
        t = call(f"{__name__}:torch_pruning", framework="torch", name=name, repeats=repeats)
        rows.append(_row(name, o, t, repeats, device, source))
    return rows


def _row(name, o, t, repeats, device, source) -> dict:
    return {"model": name, "device": device, "source": source, "repeats": repeats,
            "ours_median_s": o["median_s"], "tp_median_s": t["median_s"], "tp_over_ours": t["median_s"] / o["median_s"],
            "ours_first_s": o["first_s"], "tp_first_s": t["first_s"], "groups": f"{o['groups']} / {t['groups']}"}


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "graph@legacy"
    rows = [_row(n, r["ours"], r["torch_pruning"], d["repeats"], LEGACY_DEVICE, key) for n, r in d["models"].items()]
    return rows, {key: {"command": d["command"].replace("", ""), "machine": d["device"],
                        "note": "benchmarks/graph.py before the experiments package"}}


def table(rows, sources) -> ResultTable:
    t = ResultTable("graph", "Channel-graph discovery: hobs_jax.graph vs Torch-Pruning's DependencyGraph",
                    [Column("model", "model"), Column("ours_median_s", "ours median (s)", "float", 3),
                     Column("tp_median_s", "TP median (s)", "float", 3),
                     Column("tp_over_ours", "TP / ours", "speedup"),
                     Column("ours_first_s", "ours first (s)", "float", 3),
                     Column("tp_first_s", "TP first (s)", "float", 3),
                     Column("groups", "groups ours / TP")],
                    context=("device",), iso_tolerance=None, description=[__doc__.split("\n\n")[0].replace("\n", " "),
                                                                          "Input 1x224x224x3 (NCHW for torch). "
                                                                          "Shared machine: compare the ratio."])
    t.extend(rows)
    t.add_sources(sources)
    return t
