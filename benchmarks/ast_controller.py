"""Tune the AST PI controller in closed loop on synthetic score streams (seconds, numpy).

    python benchmarks/ast_controller.py            # -> docs/results/ast_controller.{md,json,png}

The measurement and its report: :mod:`hobs_jax.experiments.studies.ast_controller`.
"""

import sys

from hobs_jax.experiments.studies import ast_controller as study

if __name__ == "__main__":
    sys.exit(study.main())
