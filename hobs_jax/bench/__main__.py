"""``python -m hobs_jax.bench``: latency, throughput, memory and compile time of zoo and
saved (pruned) models in XLA, ONNX Runtime, torch, torch.compile and TensorRT.

    python -m hobs_jax.bench --model resnet20:input=28x28x1 --runtimes xla,onnxruntime,torch \\
        --batch-sizes 1,8,32,128 --out runs/bench_r20
    python -m hobs_jax.bench --model runs/q/train/model:label=dense,input=28x28x1 \\
        --model runs/q/prune/model:label=pruned,input=28x28x1 --baseline dense --out runs/bench_q

Writes results.csv, results.json, summary.md and latency/throughput/memory/compile plots
into ``--out``; docs/bench.md explains every column and the timing method.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from hobs_jax.bench.runtimes import RUNTIMES

    p = argparse.ArgumentParser(prog="python -m hobs_jax.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="a zoo name or a saved model directory, with options after ':' "
                        "(label=, input=HxWxC, classes=, channels=, seed=, widths=FILE.json, scale=, onnx=); "
                        "repeat for several models")
    p.add_argument("--runtimes", default="all",
                   help=f"comma-separated subset of {','.join(RUNTIMES)} (default: all; those not installed "
                        "are reported as skipped; a named one that is not installed is an error)")
    p.add_argument("--devices", default="", help="cpu and/or gpu (default: the GPU when one is visible, else cpu)")
    p.add_argument("--dtypes", default="",
                   help="float32, bfloat16, float16 (default: each runtime's own on the device)")
    p.add_argument("--batch-sizes", default="1,8,32,128")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls after the compiling one")
    p.add_argument("--iters", type=int, default=50, help="timed calls per configuration (over all rounds)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per framework (0: all cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time per call, or (with --threads 1, CPU only) the worker's CPU time per call: "
                        "the latency on an idle core, robust on a machine shared with other jobs")
    p.add_argument("--fast-depthwise", choices=("auto", "on", "off"), default="auto",
                   help="XLA only: depthwise convs as shifted-slice sums (the form XLA:CPU runs fast; "
                        "same network); auto: on for a CPU device")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse to time when a runtime's outputs disagree with Flax (default: on)")
    p.add_argument("--baseline", default=None, help="model label the others' speedups are relative to")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hobs_jax.bench import Options, parse_model, run_suite
    from hobs_jax.bench.runtimes import DEVICES, DTYPES, parse_list

    try:
        try:
            sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--batch-sizes {args.batch_sizes!r}: comma-separated positive ints") from None
        opts = Options(batch_sizes=sizes, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
                       threads=args.threads, verify=args.verify, clock=args.clock,
                       fast_depthwise=args.fast_depthwise,
                       devices=parse_list(args.devices, "device", DEVICES) or None,
                       dtypes=parse_list(args.dtypes, "dtype", DTYPES) or None)
        models = [parse_model(m) for m in args.model]
        result = run_suite(models, args.runtimes, opts, out_dir=args.out, plots=args.plots,
                           baseline=args.baseline)
    except ValueError as e:
        if os.environ.get("HOBS_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_ok = len(result.ok_rows())
    print(f"{n_ok} of {len(result.rows)} configurations timed; {os.path.join(args.out, 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
