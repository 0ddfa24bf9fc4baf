"""Batches/s of our numpy TrainLoader vs grain MapDataset pipelines on Fashion-MNIST
(:mod:`hobs_jax.experiments.studies.data_pipeline`).

    python benchmarks/data_pipeline.py --batches 300     # docs/results/data_pipeline.{json,md,tex}
"""

import argparse

from hobs_jax.experiments import records, studies
from hobs_jax.experiments.studies import data_pipeline as study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--out", default="docs/results")
    a = p.parse_args(argv)
    key, src = records.source_here(studies.command(study.SCRIPT, argv))
    rows = study.measure(a.batches, a.batch_size, device=src["device"], source=key)
    studies.publish(study.NAME, rows, {key: src}, study.table, a.out)


if __name__ == "__main__":
    main()
