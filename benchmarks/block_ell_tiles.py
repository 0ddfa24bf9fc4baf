"""GPU tile sweep of the Block-ELL kernels at 4096^3 bf16, b = 64 (device time): the sweep
behind the defaults in ``kernels/config.py``; GPU only.

    python benchmarks/block_ell_tiles.py --out /tmp   # writes /tmp/explore2.json

The measurement: :mod:`hobs_jax.experiments.studies.block_ell_tiles`.
"""

import sys

from hobs_jax.experiments.studies import block_ell_tiles as study

if __name__ == "__main__":
    sys.exit(study.main())
