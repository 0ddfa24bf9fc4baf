"""Numerical parity of the registered methods across a refactor: record, then check.

    python benchmarks/methods_parity.py record /tmp/parity_before
    ... refactor ...
    python benchmarks/methods_parity.py check /tmp/parity_before

The measurement and its report: :mod:`hobs_jax.experiments.studies.methods_parity`.
"""

import sys

from hobs_jax.experiments.studies import methods_parity as study

if __name__ == "__main__":
    sys.exit(study.main())
