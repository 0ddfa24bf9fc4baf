"""One depthwise conv layer in XLA: grouped conv vs shifted-slice sum (the fast path of
``train.fast_depthwise``), forward and gradients (:mod:`hobs_jax.experiments.studies.depthwise_layer`).

    python benchmarks/depthwise_layer.py
    python benchmarks/depthwise_layer.py --cases 32x28x28x96:3:1 --repeats 11
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import depthwise_layer as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--cases", default="32x28x28x96:3:1,32x28x28x96:3:2,32x14x14x240:5:1",
                   help="comma-separated BxHxWxC:kernel:stride")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    study.cases(a.cases)  # a bad case fails here, before any timing
    studies.measure_and_publish(study, argv, a.cases, a.repeats, out=a.out)


if __name__ == "__main__":
    main()
