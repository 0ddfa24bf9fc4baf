"""How a 3x3 conv's Hessian statistics X^T X are reduced: four implementations timed on the
same inputs (:mod:`hobs_jax.experiments.studies.hessian_gram`).

    python benchmarks/hessian_gram.py                 # docs/results/hessian_gram.{json,md,tex}
    python benchmarks/hessian_gram.py --shapes 14x32 --reps 2 --out /tmp/hg
"""

import argparse

from hobs_jax.experiments import records, studies
from hobs_jax.experiments.studies import hessian_gram as study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--shapes", default="28x16,14x32,7x64", help="SIZExCHANNELS,...")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="docs/results")
    a = p.parse_args(argv)
    key, src = records.source_here(studies.command(study.SCRIPT, argv))
    rows = study.measure(a.batch, a.shapes, a.reps, device=src["device"], source=key)
    studies.publish(study.NAME, rows, {key: src}, study.table, a.out)


if __name__ == "__main__":
    main()
