"""Where a pruned network's time goes, per layer and per part, from the latency tables of
XLA and ONNX Runtime at each batch (:mod:`hobs_jax.experiments.studies.latency_breakdown`,
which documents the command).

    python benchmarks/latency_breakdown.py --config configs/quickstart.py \\
        --record docs/results/records/quickstart_speed.json --labels hobs_q8 --out docs/results/quickstart_breakdown
"""

import sys

from hobs_jax.experiments.studies import latency_breakdown as study

if __name__ == "__main__":
    sys.exit(study.main())
