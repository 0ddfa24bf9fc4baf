"""One-shot pruning side by side on the trained Fashion-MNIST ResNets: every method of
ours and Torch-Pruning's own pruners at the same MACs, evaluated by the same code.

    python benchmarks/oneshot_fmnist.py --models resnet56,resnet20 \\
        --targets 0.5,0.333 --steps 50,200,epoch --workdir runs/oneshot_fmnist

The measurement and its report: :mod:`hobs_jax.experiments.studies.oneshot_fmnist`.
"""

import sys

from hobs_jax.experiments.studies import oneshot_fmnist as study

if __name__ == "__main__":
    sys.exit(study.main())
