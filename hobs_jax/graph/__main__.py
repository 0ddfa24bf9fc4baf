"""Print the channel groups of a zoo model.

    python -m hobs_jax.graph --model resnet50
    python -m hobs_jax.graph --model vit_b_16 --widths '{"hidden": 384}'

One line per group (id, size, width entries, kind or why it is not prunable, members by
module); the last line reads ``N groups, C channels``: N prunable groups holding C
channels in total (input-channel and logits groups are listed but not counted).
"""

from __future__ import annotations

import argparse
import json
import sys

from hobs_jax import models
from hobs_jax.graph.trace import build_graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hobs_jax.graph", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=models.list_models())
    parser.add_argument("--widths", default=None, help="JSON object of width overrides")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--in-channels", type=int, default=None)
    args = parser.parse_args(argv)
    widths = json.loads(args.widths) if args.widths else None
    model = models.build(args.model, widths=widths, num_classes=args.num_classes,
                         in_channels=args.in_channels)
    shape = models.input_shape(args.model, 1, in_channels=args.in_channels)
    sys.stdout.write(build_graph(model, None, shape, name=args.model).dump() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
