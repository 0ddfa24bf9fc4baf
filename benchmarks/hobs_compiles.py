"""Where a first H-OBS call spends its XLA compile time, by phase and jitted function, in a
fresh process with no compilation cache (:mod:`hobs_jax.experiments.studies.hobs_compiles`).

    python benchmarks/hobs_compiles.py                 # default refit (propagate=1)
    python benchmarks/hobs_compiles.py --propagate 0
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import hobs_compiles as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--propagate", type=int, default=1, help="H-OBS refit sweeps (the method's default: 1)")
    p.add_argument("--calib", type=int, default=2048, help="calibration images")
    a = p.parse_args(argv)
    if a.propagate < 0 or a.calib < 1:
        raise SystemExit(f"error: --propagate must be >= 0 and --calib >= 1, got {a.propagate} and {a.calib}")
    studies.measure_and_publish(study, argv, a.checkpoint, a.propagate, a.calib, out=a.out)


if __name__ == "__main__":
    main()
