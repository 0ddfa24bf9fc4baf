"""Cost of one H-OBS run: wall and CPU seconds per phase and peak memory, each case in its
own process (:mod:`hobs_jax.experiments.studies.hobs_cost`).

    python benchmarks/hobs_cost.py                                    # resnet56 and resnet50
    python benchmarks/hobs_cost.py --cases resnet56,resnet56-refit --name hobs_cost_avx512
"""

import functools

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import hobs_cost as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--cases", default="resnet56,resnet50", help=f"of {','.join(study.GOALS)}")
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--calib", type=int, default=0, help="calibration images (0: the case's default)")
    p.add_argument("--size", type=int, default=224, help="ResNet-50 input size")
    p.add_argument("--propagate", type=int, default=0, help="H-OBS refit sweeps of the resnet56 case")
    p.add_argument("--name", default=study.NAME, help="table name (a device's own table, e.g. hobs_cost_avx512)")
    a = p.parse_args(argv)
    cases = [c for c in a.cases.split(",") if c]
    bad = [c for c in cases if c not in study.GOALS]
    if bad:
        raise SystemExit(f"error: unknown case {bad[0]!r}; use {sorted(study.GOALS)}")
    studies.measure_and_publish(study, argv, cases, a.checkpoint, a.propagate, a.calib, a.size, out=a.out,
                                name=a.name, table_fn=functools.partial(study.table, name=a.name))


if __name__ == "__main__":
    main()
