"""What the workdir lock costs a run: acquire/release of ``<workdir>/.lock`` and a whole
``Workdir.open()`` + ``close()`` (goal: under 10 ms; :mod:`hobs_jax.experiments.studies.workdir_lock`).

    python benchmarks/workdir_lock.py [--dir /path/on/the/filesystem/to/test]   # docs/results/workdir_lock.*
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import workdir_lock as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--dir", default=None, help="where the workdirs go (default: a temp dir)")
    p.add_argument("--iters", type=int, default=1000)
    a = p.parse_args(argv)
    studies.measure_and_publish(study, argv, a.iters, a.dir, out=a.out)


if __name__ == "__main__":
    main()
