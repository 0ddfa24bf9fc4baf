"""Entry point: ``python -m hobs_jax.main --config=configs/X.py --workdir=DIR``.

Flags only; all logic is in :func:`hobs_jax.pipeline.run`. Config overrides use
ml_collections syntax (``--config.prune.target=0.4``; a misspelled key fails) and
``--config=configs/X.py:smoke`` picks a config's small variant. Every run first calls
``hobs_jax.train.distributed.initialize()``, which joins a multi-host process group when
there is one (TPU pods, SLURM, Open MPI, launch/local_multihost.sh) and does nothing
otherwise.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's outputs.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent XLA compilation cache directory (default: $JAX_COMPILATION_CACHE_DIR "
    "or ~/.cache/hobs_jax/xla; '' turns it off). A later run of the same shapes loads its executables "
    "instead of compiling them.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("hobs_jax").setLevel(logging.INFO)
    if not any(a.startswith(("--verbosity", "-v", "--v=")) for a in sys.argv[1:]):
        # orbax and other libraries log every checkpoint step through absl at INFO; keep
        # the console to hobs_jax's own progress unless --verbosity asks for more.
        logging.getLogger("absl").setLevel(logging.WARNING)
        logging.getLogger("jax").setLevel(logging.WARNING)
    from hobs_jax import compile_cache
    from hobs_jax.pipeline import run
    from hobs_jax.train.distributed import initialize

    initialize()  # joins a TPU pod / SLURM / Open MPI / HOBS_* process group; no-op alone

    try:
        cache = _COMPILE_CACHE.value
        compile_cache.enable(compile_cache.default_dir() if cache is None else cache)
        run(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:  # bad config, data or workdir: one line (HOBS_JAX_TRACEBACK=1 for more)
        if os.environ.get("HOBS_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
