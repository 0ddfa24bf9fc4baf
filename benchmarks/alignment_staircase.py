"""Latency staircases of representative layers over output widths, per runtime, and the
width quantum each implies (``hobs_jax.allocation.alignment``).

    python benchmarks/alignment_staircase.py          # ResNet-20 on 28x28: 14x14 stage, batch 1 and 64
    python benchmarks/alignment_staircase.py --runtimes xla --layers conv3x3 --batches 1 \\
        --max-width 24 --rounds 2 --out /tmp/stairs                       # a quick smoke run

The measurement and its report: :mod:`hobs_jax.experiments.studies.alignment_staircase`.
"""

import sys

from hobs_jax.experiments.studies import alignment_staircase as study

if __name__ == "__main__":
    sys.exit(study.main())
