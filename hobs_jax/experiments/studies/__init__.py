"""Measurements behind the benchmark scripts (``benchmarks/*.py`` are their command lines):
each study measures rows, names their source (:func:`hobs_jax.experiments.records.source_here`)
and builds its :class:`~hobs_jax.experiments.table.ResultTable`; ``from_legacy`` converts
the record an earlier script wrote, keeping its provenance."""

from __future__ import annotations



import os
import shlex
import sys


def command(script: str, argv=None) -> str:
    """The command line that produced a result, as it is recorded."""
    return f"python {script} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def publish(name: str, rows: list[dict], sources: dict, table_fn, out: str = "docs/results",
            records_dir: str | None = None) -> list[str]:
    """Save the run record (``docs/results/records/NAME.json``) and write the table built
    from it (``OUT/NAME.{json,md,tex}``); returns the paths and prints the Markdown."""
    from hobs_jax.experiments import records

    rec = records.save(os.path.join(records_dir or os.path.join(out, "records"), f"{name}.json"), rows, sources)
    t = table_fn(rows, sources)
    paths = [rec] + t.write(os.path.join(out, name))
    print(t.to_markdown())
    return paths


def calibration(n: int, *, seed: int = 0, split: str = "train", source: str = "fashion_mnist", **source_kw):
    """The pipeline's calibration set (:func:`hobs_jax.data.sample_indices`, no
    augmentation) as a :class:`hobs_jax.methods.Calibration`, for studies that call a method
    directly."""
    import numpy as np

    from hobs_jax.data import get_source, sample_indices
    from hobs_jax.methods import Calibration

    src = get_source(source, **source_kw)
    x, y = src.batch(split, sample_indices(src.size(split), n, seed), train=False)
    return Calibration(np.asarray(x, np.float32), np.asarray(y, np.int32))
