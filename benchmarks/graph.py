"""Channel-graph discovery time: hobs_jax.graph.build_graph vs Torch-Pruning's
DependencyGraph on ResNet-50 and EfficientNet-B0 (224x224, batch 1), each framework in its
own process (:mod:`hobs_jax.experiments.studies.graph_discovery`).

    python benchmarks/graph.py --repeats 7        # docs/results/graph.{json,md,tex}
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import graph_discovery as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default=",".join(study.MODELS))
    a = p.parse_args(argv)
    studies.measure_and_publish(study, argv, a.models.split(","), a.repeats, out=a.out, name="graph",
                                script="benchmarks/graph.py")


if __name__ == "__main__":
    main()
