"""``python -m hobs_jax.validate``: check a setup before a long run, or the iso-budget of
two saved models.

    python -m hobs_jax.validate --config=configs/resnet56_fmnist.py
    python -m hobs_jax.validate --config=configs/quickstart.py:smoke --config.prune.method=udfc
    python -m hobs_jax.validate --compare runs/a/prune/model runs/b/prune/model --tol 0.01

One line per check (``PASS``/``FAIL``, what was checked or what is wrong); exit code 1 when
any check fails, 2 for bad arguments. The checks: :mod:`hobs_jax.experiments.validate`.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (':VARIANT' allowed).",
                                          lock_config=True)
_COMPARE = flags.DEFINE_multi_string("compare", None, "Two saved models (hobs_jax.export directories): "
                                     "--compare A B or --compare A --compare B.")
_TOL = flags.DEFINE_float("tol", 0.01, "Relative tolerance of --compare.")
_TOTAL_ONLY = flags.DEFINE_boolean("total_only", False, "--compare: check the totals only (allocations may differ).")
_CHECKS = flags.DEFINE_list("checks", "variants,recipe,data,macs,latency,method", "Which checks of --config.")


def main(argv: list[str]) -> None:
    from hobs_jax.experiments import validate as v

    if _COMPARE.value:
        paths = list(_COMPARE.value) + list(argv[1:])
        if len(paths) != 2:
            raise app.UsageError(f"--compare takes two model directories, got {len(paths)}")
        try:
            checks, table = v.compare_models(paths[0], paths[1], tol=_TOL.value, per_layer=not _TOTAL_ONLY.value)
        except ValueError as e:
            print(f"FAIL  compare: {e}")
            sys.exit(1)
        print(table)
    elif _CONFIG.value is not None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        path, _, variant = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
        checks = v.check_config(path, variant, checks=_CHECKS.value, config=_CONFIG.value)
    else:
        raise app.UsageError("give --config=configs/X.py or --compare A B")
    for c in checks:
        print(c.line())
    sys.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    app.run(main)
