"""R-SPAR + H-OBS vs uniform H-OBS vs global-saliency H-OBS ("w/o RL") on the trained
Fashion-MNIST ResNets, at the same MACs.

    python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.5,0.333 \\
        --seeds 0,1,2 --episodes 150 --lbound 0.1 --rerank 10 --workdir runs/rspar_fmnist_v3

The measurement and its report: :mod:`hobs_jax.experiments.studies.rspar_fmnist`.
"""

import sys

from hobs_jax.experiments.studies import rspar_fmnist as study

if __name__ == "__main__":
    sys.exit(study.main())
