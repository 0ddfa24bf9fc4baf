"""What the workdir lock costs a run: the time to create-or-open ``<workdir>/.lock``,
``flock`` it, check its inode and write the holder record, then release it
(:class:`hobs_jax.pipeline.lock.WorkdirLock`), and the whole ``Workdir.open()`` +
``close()`` a run does (path checks included). The goal (issue 23) is under 10 ms.

    python benchmarks/workdir_lock.py [--dir /path/on/the/filesystem/to/test]

The measurement and its report: :mod:`hobs_jax.experiments.studies.workdir_lock`.
"""

import sys

from hobs_jax.experiments.studies import workdir_lock as study

if __name__ == "__main__":
    sys.exit(study.main())
