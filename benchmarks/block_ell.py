"""Block-ELL SpMM vs dense ``jnp.dot`` at the same shape.

    python benchmarks/block_ell.py --quick

    python benchmarks/block_ell.py

The measurement and its report: :mod:`hobs_jax.experiments.studies.block_ell`.
"""

import sys

from hobs_jax.experiments.studies import block_ell as study

if __name__ == "__main__":
    sys.exit(study.main())
