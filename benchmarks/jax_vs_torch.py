"""JAX vs PyTorch dense inference on this machine: the zoo's ResNet-20/56 (Fashion-MNIST
size, 28x28x1), MobileNetV2, EfficientNet-B0, ResNet-50 and ViT-B/16 (224x224x3) in XLA,
torch eager, torch.compile and ONNX Runtime (and on a GPU, TensorRT), with
``hobs_jax.bench``.

The models run in three suite runs sized for a 2-core CPU (batch sizes and calls shrink
with the model); each writes its results and plots to ``--out/<group>/`` with its tables
(:mod:`hobs_jax.experiments.bench_tables`), and ``--out.{json,md,tex}`` collects the
JAX-vs-PyTorch table. ``--render-only`` rebuilds the tables from the stored results.

    nice -n 10 python benchmarks/jax_vs_torch.py                  # docs/results/jax_vs_torch*
    nice -n 10 python benchmarks/jax_vs_torch.py --threads 1 --clock cpu   # on a shared machine
    python benchmarks/jax_vs_torch.py --groups small --quick --out /tmp/jvt   # minutes
"""

import argparse
import json
import os

# group -> (models, batch sizes, timed calls per configuration, rounds, warm-up calls)
GROUPS = {
    "small": (["resnet20:input=28x28x1", "resnet56:input=28x28x1"], (1, 8, 32, 128), 40, 4, 3),
    "mobile": (["mobilenet_v2", "efficientnet_b0"], (1, 8, 32), 12, 3, 2),
    "large": (["resnet50", "vit_b_16"], (1, 8), 6, 3, 1),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--runtimes", default="xla,torch,torch-compile,onnxruntime,tensorrt")
    p.add_argument("--devices", default="", help="cpu and/or gpu (default: the GPU when present)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the workers' CPU time per call (with --threads 1; robust on a shared machine)")
    p.add_argument("--quick", action="store_true", help="batch sizes 1,8 and 4 calls (a smoke run)")
    p.add_argument("--render-only", action="store_true", help="rebuild the tables from --out/<group>/results.json")
    p.add_argument("--out", default="docs/results/jax_vs_torch")
    args = p.parse_args(argv)
    from hobs_jax.bench import Options, parse_model, run_suite
    from hobs_jax.bench import runtimes as rt
    from hobs_jax.experiments import bench_tables

    groups = [g for g in args.groups.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise SystemExit(f"error: unknown group {bad[0]!r}; use {', '.join(GROUPS)}")
    # TensorRT only where installed: the suite errors on a named runtime that is missing.
    runtimes = [r for r in args.runtimes.split(",") if r and (r != "tensorrt" or rt.get_runtime(r).framework())]
    devices = rt.parse_list(args.devices, "device", rt.DEVICES) or None
    results = {}
    for group in groups:
        specs, sizes, iters, rounds, warmup = GROUPS[group]
        if args.quick:
            sizes, iters, rounds, warmup = sizes[:2], 4, 2, 1
        if not args.render_only:
            opts = Options(batch_sizes=sizes, iters=iters, rounds=rounds, warmup=warmup, threads=args.threads,
                           devices=devices, clock=args.clock)
            run_suite([parse_model(m) for m in specs], runtimes, opts, out_dir=os.path.join(args.out, group))
        bench_tables.render_run(os.path.join(args.out, group))
        with open(os.path.join(args.out, group, "results.json")) as f:
            results[group] = json.load(f)
    print("\n".join(bench_tables.write_jax_vs_torch(results, args.out)))


if __name__ == "__main__":
    main()
