"""Where H-OBS's sequential refit spends its time: its parts timed one by one on the
Fashion-MNIST ResNet-56 (:mod:`hobs_jax.experiments.studies.hobs_refit_parts`).

    python benchmarks/hobs_refit_parts.py          # docs/results/hobs_refit_parts.{json,md,tex}
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import hobs_refit_parts as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--images", type=int, default=512)
    a = p.parse_args(argv)
    studies.measure_and_publish(study, argv, a.checkpoint, a.images, out=a.out)


if __name__ == "__main__":
    main()
