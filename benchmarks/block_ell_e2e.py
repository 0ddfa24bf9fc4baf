"""End-to-end latency: a channel-pruned ResNet-50 with and without Block-ELL 1x1 convs.

    python benchmarks/block_ell_e2e.py --quick

    python benchmarks/block_ell_e2e.py

The measurement and its report: :mod:`hobs_jax.experiments.studies.block_ell_e2e`.
"""

import sys

from hobs_jax.experiments.studies import block_ell_e2e as study

if __name__ == "__main__":
    sys.exit(study.main())
