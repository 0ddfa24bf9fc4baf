"""R-SPAR in latency mode: requested vs measured end-to-end speedup on this device.

    python benchmarks/rspar_latency.py                  # ResNet-50, 224, 3.10x
    python benchmarks/rspar_latency.py --model resnet20 --size 28 --speedup 2 \\
        --calib 96 --reward_images 32 --episodes 6 --warmup 3 --lut /tmp/lut_r20.json \\
        --out /tmp/rspar_latency                                      # a quick smoke run

The measurement and its report: :mod:`hobs_jax.experiments.studies.rspar_latency`.
"""

import sys

from hobs_jax.experiments.studies import rspar_latency as study

if __name__ == "__main__":
    sys.exit(study.main())
