"""How a 3x3 conv's Hessian statistics X^T X are reduced: four implementations timed on the
same inputs (:mod:`hobs_jax.experiments.studies.hessian_gram`).

    python benchmarks/hessian_gram.py                 # docs/results/hessian_gram.{json,md,tex}
    python benchmarks/hessian_gram.py --shapes 14x32 --reps 2 --out /tmp/hg
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import hessian_gram as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--shapes", default="28x16,14x32,7x64", help="SIZExCHANNELS,...")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    studies.measure_and_publish(study, argv, a.batch, a.shapes, a.reps, out=a.out)


if __name__ == "__main__":
    main()
