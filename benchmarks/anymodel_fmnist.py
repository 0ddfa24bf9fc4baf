"""A network outside the zoo, trained on Fashion-MNIST (the full training split) and pruned
one-shot to half its MACs: H-OBS next to magnitude (issue 17).

    python benchmarks/anymodel_fmnist.py --model hobs_jax.testing.nets:DenseNetFM --epochs 4

Writes docs/results/anymodel_fmnist.{json,md,tex} and docs/results/records/anymodel_fmnist.json.
The measurement and its report: :mod:`hobs_jax.experiments.studies.anymodel_fmnist`.
"""

import sys

from hobs_jax.experiments.studies import anymodel_fmnist as study

if __name__ == "__main__":
    sys.exit(study.main())
