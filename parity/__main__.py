"""``python -m parity --model NAME [NAME ...] [--dtype float32|float64] [--batch N]`` or ``--all``.

Prints the per-stage agreement of the Flax zoo model with its torch reference and ends
with ``PASS n/n models`` or ``FAIL k/n models`` (exit status 1 on failure).
"""

from __future__ import annotations

import argparse
import sys

from parity.check import ALL_MODELS, check_model, format_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity", description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=ALL_MODELS, nargs="+", metavar="NAME",
                       help=f"zoo model name(s) (torchvision spelling): {', '.join(ALL_MODELS)}")
    which.add_argument("--all", action="store_true", help="every zoo model")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--batch", type=int, default=2, help="evaluation images (default 2)")
    p.add_argument("--calib", type=int, default=32, help="BN calibration images (default 32)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.calib < 1:
        p.error("--batch and --calib must be >= 1")
    names = ALL_MODELS if args.all else tuple(dict.fromkeys(args.model))
    failed = []
    for name in names:
        result = check_model(name, args.dtype, args.batch, args.calib)
        print(format_result(result), flush=True)
        if not result.passed:
            failed.append(name)
    n = len(names)
    print(f"FAIL {len(failed)}/{n} models ({', '.join(failed)})" if failed else f"PASS {n}/{n} models")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
