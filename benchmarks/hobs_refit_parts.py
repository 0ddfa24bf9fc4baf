"""Where H-OBS's sequential refit spends its time: its parts timed one by one on the
Fashion-MNIST ResNet-56 (:mod:`hobs_jax.experiments.studies.hobs_refit_parts`).

    python benchmarks/hobs_refit_parts.py          # docs/results/hobs_refit_parts.{json,md,tex}
"""

import argparse

from hobs_jax.experiments import records, studies
from hobs_jax.experiments.studies import hobs_refit_parts as study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--out", default="docs/results")
    a = p.parse_args(argv)
    key, src = records.source_here(studies.command(study.SCRIPT, argv))
    rows = study.measure(a.checkpoint, a.images, device=src["device"], source=key)
    studies.publish(study.NAME, rows, {key: src}, study.table, a.out)


if __name__ == "__main__":
    main()
