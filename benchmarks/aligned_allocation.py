"""Aligned and latency-budgeted allocation on the trained Fashion-MNIST ResNets: one H-OBS
selection, one allocation per row, BN re-estimation, accuracy, and every row timed
against dense in one interleaved run of ``hobs_jax.bench``
(:mod:`hobs_jax.experiments.studies.aligned_allocation`, which documents the rows).

    python benchmarks/aligned_allocation.py --config configs/quickstart.py \\
        --workdir runs/aligned_r20 --rows hobs=macs:0.5:1,hobs_q8=macs:0.5:8 --out docs/results/aligned_r20
"""

import sys

from hobs_jax.experiments.studies import aligned_allocation as study

if __name__ == "__main__":
    sys.exit(study.main())
