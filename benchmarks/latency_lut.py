"""Build the per-layer latency lookup table R-SPAR's latency budget uses, on this device.

Every Conv/Dense layer of the model is timed (jitted, median of ``--reps``) at a grid of
``--points`` x ``--points`` (input, output) channel counts, at the model's input shape
and ``--batch``; the JSON records the model, input shape, graph fingerprint, device and
JAX version (``hobs_jax.rspar.latency``), and R-SPAR refuses a table measured for another
model or device.

    python benchmarks/latency_lut.py --model resnet56 \\
        --checkpoint checkpoints/resnet56_fmnist --input 28,28,1 --out runs/lut_resnet56.json
    python benchmarks/latency_lut.py --model resnet50 --input 224,224,3 \\
        --batch 8 --out runs/lut_resnet50.json          # random weights: latency only

Then: ``--config.prune.method=rspar --config.prune.rspar.budget=latency
--config.prune.rspar.latency_lut=runs/lut_resnet56.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", default="", help="hobs_jax.export directory (else random weights)")
    p.add_argument("--input", default="", help="H,W,C (default: the zoo's input shape)")
    p.add_argument("--num_classes", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from hobs_jax import models
    from hobs_jax.rspar.latency import measure_lut

    if args.checkpoint:
        import hobs_jax
        model, variables, _ = hobs_jax.load(args.checkpoint)
    else:
        kw = {"num_classes": args.num_classes} if args.num_classes else {}
        model = models.build(args.model, **kw)
        shape = (1,) + tuple(int(s) for s in args.input.split(",")) if args.input else models.input_shape(args.model, 1)
        variables = models.random_variables(model, shape, seed=0)
    shape = ((1,) + tuple(int(s) for s in args.input.split(",")) if args.input
             else models.input_shape(args.model, 1))
    t = time.perf_counter()
    table = measure_lut(args.model, variables, shape, batch=args.batch, points=args.points, reps=args.reps)
    table["seconds_to_build"] = time.perf_counter() - t
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
    print(f"{args.out}: {len(table['layers'])} layers, dense {table['dense_seconds'] * 1e3:.2f} ms, "
          f"rest {table['rest_seconds'] * 1e3:.2f} ms, built in {table['seconds_to_build']:.0f} s on {table['device']}")


if __name__ == "__main__":
    main()
