"""Build the per-layer latency table of a network (``hobs_jax.methods.latency_table``) on
this device, in XLA or ONNX Runtime at the serving batch size, and cache it where
``metric='latency'`` finds it (``--cache``) or write it to ``--out``.

Every Conv/Dense layer on a prunable group is timed at a grid of ``--points`` x
``--points`` (input, output) channel counts (rounded to ``--quantum``), layers of one
shape once, interleaved over ``--rounds`` in a process of its own; the JSON records the
model, input shape, graph fingerprint, runtime, batch, threads and device, and every
allocator refuses a table measured for another model, widths, device or runtime.

    python benchmarks/latency_lut.py --model resnet56 \\
        --checkpoint checkpoints/resnet56_fmnist --input 28,28,1 --runtime onnxruntime --batch 64 --cache
    python benchmarks/latency_lut.py --model resnet50 --input 224,224,3 \\
        --batch 8 --out runs/lut_resnet50.json          # random weights: latency only

Then: ``--config.prune.metric=latency`` (the cached table; the pipeline measures one when
missing), ``--config.prune.latency.table=runs/lut_resnet50.json``, or R-SPAR's
``--config.prune.rspar.budget=latency --config.prune.rspar.latency_lut=...``.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", default="", help="hobs_jax.export directory (else random weights)")
    p.add_argument("--input", default="", help="H,W,C (default: the zoo's input shape)")
    p.add_argument("--num_classes", type=int, default=0)
    p.add_argument("--runtime", default="xla", choices=("xla", "onnxruntime"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="cores (0: all)")
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--quantum", type=int, default=1, help="round the grid's inner counts to multiples")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dense-ms", type=float, default=0.0,
                   help="the dense network's time in this runtime (e.g. python -m hobs_jax.bench's p50); "
                        "ONNX Runtime's rest of the network is 0 without it")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", default="")
    g.add_argument("--cache", action="store_true", help="store in the cache metric='latency' reads")
    args = p.parse_args(argv)
    from hobs_jax import models
    from hobs_jax.methods.latency_table import cached_table, measure_table

    shape = ((1,) + tuple(int(s) for s in args.input.split(",")) if args.input
             else models.input_shape(args.model, 1))
    if args.checkpoint:
        import hobs_jax
        _, variables, _ = hobs_jax.load(args.checkpoint)
    else:
        kw = {"num_classes": args.num_classes} if args.num_classes else {}
        variables = models.random_variables(models.build(args.model, **kw), shape, seed=0)
    kw = dict(runtime=args.runtime, batch=args.batch, threads=args.threads, points=args.points,
              quantum=args.quantum, rounds=args.rounds, iters=args.iters,
              dense_seconds=args.dense_ms / 1e3 if args.dense_ms else None)
    if args.cache:
        table = cached_table(args.model, variables, shape, **kw)
        where = "cache"
    else:
        table = measure_table(args.model, variables, shape, **kw)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
        where = args.out
    print(f"{where}: {len(table['layers'])} layers in {table['runtime']} at batch {table['batch']}, dense "
          f"{table['dense_seconds'] * 1e3:.2f} ms, rest {table['rest_seconds'] * 1e3:.2f} ms "
          f"({table['rest_source']}), built in {table.get('seconds_to_build', 0):.0f} s on {table['device']}")


if __name__ == "__main__":
    main()
