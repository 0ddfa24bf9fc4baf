"""Record the Fashion-MNIST baselines trained by the pipeline and ship their checkpoints.

    python -m hobs_jax.main --config=configs/resnet20_fmnist.py --workdir=runs/resnet20_fmnist \\
        --config.stages=train
    python -m hobs_jax.main --config=configs/resnet56_fmnist.py --workdir=runs/resnet56_fmnist \\
        --config.stages=train

    python benchmarks/fmnist_baselines.py --runs runs --models resnet20,resnet56

The measurement and its report: :mod:`hobs_jax.experiments.studies.fmnist_baselines`.
"""

import sys

from hobs_jax.experiments.studies import fmnist_baselines as study

if __name__ == "__main__":
    sys.exit(study.main())
