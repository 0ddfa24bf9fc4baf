"""A network outside the zoo, trained briefly on Fashion-MNIST and pruned one-shot to half
its MACs: H-OBS next to magnitude (issue 17).

    python benchmarks/anymodel_fmnist.py --model resnext --epochs 3

The measurement and its report: :mod:`hobs_jax.experiments.studies.anymodel_fmnist`.
"""

import sys

from hobs_jax.experiments.studies import anymodel_fmnist as study

if __name__ == "__main__":
    sys.exit(study.main())
