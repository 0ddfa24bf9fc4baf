"""Channel-graph discovery time: hobs_jax.graph.build_graph vs Torch-Pruning's
DependencyGraph().build_dependency, on ResNet-50 and EfficientNet-B0 (224x224, batch 1).

Each (framework, model) pair runs in its own subprocess (JAX and torch disturb each
other in one process): the model is built, one discovery runs as a warm-up (imports,
first-time tracing caches; its time is reported as "first"), then ``--repeats`` more,
of which the median is reported. Ours traces the Flax model abstractly (shapes only) and
applies the per-primitive rules; Torch-Pruning runs a real forward pass to record the
autograd graph, then builds its dependencies. The ratio is TP time / our time.

    PYTHONPATH=. python benchmarks/graph.py --repeats 5

Writes docs/results/graph.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODELS = ("resnet50", "efficientnet_b0")


def _ours(name: str, repeats: int) -> dict:
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


def _tp(name: str, repeats: int) -> dict:
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
            "channels": sum(len(grp[0][1]) for grp in groups), "torch_threads": torch.get_num_threads()}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} CPU cores"


def _run_worker(framework: str, name: str, repeats: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--model", name,
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"{framework}/{name} worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/results/graph")
    parser.add_argument("--worker", choices=("ours", "tp"), default=None)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if args.worker:
        fn = _ours if args.worker == "ours" else _tp
        print(json.dumps(fn(args.model, args.repeats)))
        return
    rows = {}
    for name in MODELS:
        ours, tp = _run_worker("ours", name, args.repeats), _run_worker("tp", name, args.repeats)
        rows[name] = {"ours": ours, "torch_pruning": tp, "tp_over_ours": tp["median_s"] / ours["median_s"]}
    result = {"command": f"PYTHONPATH=. python benchmarks/graph.py --repeats {args.repeats}", "device": _cpu(),
              "input": "1x224x224x3 (NCHW for torch)", "repeats": args.repeats, "models": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Channel-graph discovery: hobs_jax.graph vs Torch-Pruning DependencyGraph", "",
             f"Command: `{result['command']}`  ", f"Device: {result['device']} (shared machine; compare the ratio)",
             "", "Median of the repeats after one warm-up, each framework in its own subprocess; "
             "'first' is the warm-up call. Ours traces abstractly (no arithmetic); Torch-Pruning "
             "runs a forward pass at 224x224 and builds its graph.", "",
             "| model | ours median (s) | TP median (s) | TP / ours | ours first (s) | TP first (s) "
             "| groups ours / TP |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        o, t = r["ours"], r["torch_pruning"]
        lines.append(f"| {name} | {o['median_s']:.3f} | {t['median_s']:.3f} | {r['tp_over_ours']:.2f}x | "
                     f"{o['first_s']:.3f} | {t['first_s']:.3f} | {o['groups']} / {t['groups']} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
