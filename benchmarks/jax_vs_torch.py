"""JAX vs PyTorch dense inference on this machine: the zoo's ResNet-20/56 (Fashion-MNIST
size, 28x28x1), MobileNetV2, EfficientNet-B0, ResNet-50 and ViT-B/16 (224x224x3) in XLA,
torch eager, torch.compile and ONNX Runtime (and on a GPU, TensorRT), with
``hobs_jax.bench``.

The models run in three suite runs sized for a 2-core CPU (batch sizes and calls shrink
with the model); each writes its results, summary and plots to ``--out/<group>/``, and
``--out.md`` collects the JAX-vs-PyTorch tables.

    nice -n 10 python benchmarks/jax_vs_torch.py                  # docs/results/jax_vs_torch*
    nice -n 10 python benchmarks/jax_vs_torch.py --threads 1 --clock cpu   # on a shared machine
    python benchmarks/jax_vs_torch.py --groups small --quick --out /tmp/jvt   # minutes
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

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
    p.add_argument("--out", default="docs/results/jax_vs_torch")
    args = p.parse_args(argv)
    from hobs_jax.bench import Options, parse_model, run_suite, summary_markdown
    from hobs_jax.bench import runtimes as rt

    runtimes = [r for r in args.runtimes.split(",") if r]
    # TensorRT only where installed: the suite errors on a named runtime that is missing.
    runtimes = [r for r in runtimes if r != "tensorrt" or rt.get_runtime(r).framework()]
    devices = rt.parse_list(args.devices, "device", rt.DEVICES) or None
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (sys.argv[1:] if argv is None else argv))
    parts = ["# JAX vs PyTorch: dense inference", "",
             f"`{command}`. Per group: `summary.md`, `results.csv`/`.json` and the plots in "
             f"`{os.path.basename(args.out)}/<group>/`. Random weights (latency does not depend on them); "
             "every runtime's outputs were verified against Flax before timing.", ""]
    for group in [g for g in args.groups.split(",") if g]:
        if group not in GROUPS:
            raise SystemExit(f"error: unknown group {group!r}; use {', '.join(GROUPS)}")
        specs, sizes, iters, rounds, warmup = GROUPS[group]
        if args.quick:
            sizes, iters, rounds, warmup = sizes[:2], 4, 2, 1
        opts = Options(batch_sizes=sizes, iters=iters, rounds=rounds, warmup=warmup, threads=args.threads,
                       devices=devices, clock=args.clock)
        result = run_suite([parse_model(m) for m in specs], runtimes, opts, out_dir=os.path.join(args.out, group))
        body = summary_markdown(result).split("\n", 2)[2]  # without the title
        parts += [f"## Group {group}: batch sizes {','.join(map(str, sizes))}, {iters} timed calls over "
                  f"{rounds} rounds, {result.meta['seconds']:.0f} s", "", body.replace("\n## ", "\n### "), ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(parts))
    print(args.out + ".md")


if __name__ == "__main__":
    main()
