"""Batches/s of our numpy TrainLoader vs grain MapDataset pipelines on Fashion-MNIST
(:mod:`hobs_jax.experiments.studies.data_pipeline`).

    python benchmarks/data_pipeline.py --batches 300     # docs/results/data_pipeline.{json,md,tex}
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import data_pipeline as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=128)
    a = p.parse_args(argv)
    studies.measure_and_publish(study, argv, a.batches, a.batch_size, out=a.out)


if __name__ == "__main__":
    main()
