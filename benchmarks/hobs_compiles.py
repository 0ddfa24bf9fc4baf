"""Where a first H-OBS call spends its XLA compile time, by phase and jitted function, in a
fresh process with no compilation cache (:mod:`hobs_jax.experiments.studies.hobs_compiles`).

    python benchmarks/hobs_compiles.py                 # default refit (propagate=1)
    python benchmarks/hobs_compiles.py --propagate 0
"""

import argparse

from hobs_jax.experiments import records, studies
from hobs_jax.experiments.studies import hobs_compiles as study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--propagate", type=int, default=1, help="H-OBS refit sweeps (the method's default: 1)")
    p.add_argument("--calib", type=int, default=2048, help="calibration images")
    p.add_argument("--out", default="docs/results")
    a = p.parse_args(argv)
    if a.propagate < 0 or a.calib < 1:
        raise SystemExit(f"error: --propagate must be >= 0 and --calib >= 1, got {a.propagate} and {a.calib}")
    key, src = records.source_here(studies.command(study.SCRIPT, argv))
    rows = study.measure(a.checkpoint, a.propagate, a.calib, device=src["device"], source=key)
    studies.publish(study.NAME, rows, {key: src}, study.table, a.out)


if __name__ == "__main__":
    main()
