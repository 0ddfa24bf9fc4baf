"""Entry point: ``python -m hobs_jax.main --config=configs/X.py --workdir=DIR``.

Flags only; all logic is in :func:`hobs_jax.pipeline.run`. Config overrides use
ml_collections syntax (``--config.prune.target=0.4``; a misspelled key fails) and
``--config=configs/X.py:smoke`` picks a config's small variant. Every run first calls
``hobs_jax.train.distributed.initialize()``, which joins a multi-host process group when
there is one (TPU pods, SLURM, Open MPI, launch/local_multihost.sh) and does nothing
otherwise.

A mistake ends in one line on stderr and exit status 2, a failed save in one line and
status 1, SIGTERM/SIGINT in one line and 128 + the signal number (143/130: rerun to
resume); ``--verbose`` adds tracebacks (:mod:`hobs_jax.cli`, docs/reliability.md).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from hobs_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's outputs.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent XLA compilation cache directory (default: $JAX_COMPILATION_CACHE_DIR "
    "or ~/.cache/hobs_jax/xla; '' turns it off). A later run of the same shapes loads its executables "
    "instead of compiling them.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks and the libraries' log messages "
                             "with errors (for bug reports; also $HOBS_JAX_TRACEBACK=1).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (options are --name=value)")
    verbose = _VERBOSE.value or cli.verbose()
    logging.getLogger("hobs_jax").setLevel(logging.INFO)
    if not verbose and not any(a.startswith(("--verbosity", "-v", "--v=")) for a in sys.argv[1:]):
        cli.quiet_libraries()

    def job():
        from hobs_jax import compile_cache
        from hobs_jax.pipeline import run
        from hobs_jax.train.distributed import initialize

        initialize()  # joins a TPU pod / SLURM / Open MPI / HOBS_* process group; no-op alone
        cache = _COMPILE_CACHE.value
        compile_cache.enable(compile_cache.default_dir() if cache is None else cache)
        run(_CONFIG.value, _WORKDIR.value)

    cli.run_job(job, show_traceback=verbose)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, flags.FLAGS))
