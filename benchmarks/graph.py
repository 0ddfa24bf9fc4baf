"""Channel-graph discovery time: hobs_jax.graph.build_graph vs Torch-Pruning's
DependencyGraph on ResNet-50 and EfficientNet-B0 (224x224, batch 1), each framework in its
own process (:mod:`hobs_jax.experiments.studies.graph_discovery`).

    python benchmarks/graph.py --repeats 7        # docs/results/graph.{json,md,tex}
"""

import argparse

from hobs_jax.experiments import records, studies
from hobs_jax.experiments.studies import graph_discovery as study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default=",".join(study.MODELS))
    p.add_argument("--out", default="docs/results")
    a = p.parse_args(argv)
    key, src = records.source_here(studies.command("benchmarks/graph.py", argv))
    rows = study.measure(a.models.split(","), a.repeats, device=src["device"], source=key)
    studies.publish("graph", rows, {key: src}, study.table, a.out)


if __name__ == "__main__":
    main()
