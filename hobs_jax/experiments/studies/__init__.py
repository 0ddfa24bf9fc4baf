"""Measurements behind the benchmark scripts (``benchmarks/*.py`` are their command lines):
each study measures rows, names their source (:func:`hobs_jax.experiments.records.source_here`)
and builds its :class:`~hobs_jax.experiments.table.ResultTable`; ``from_legacy`` converts
the record an earlier script wrote, keeping its provenance."""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def command(script: str, argv=None) -> str:
    """The command line that produced a result, as it is recorded."""
    return f"python {script} {shlex.join(sys.argv[1:] if argv is None else list(argv))}".rstrip()


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


def record_path(name: str, out: str = "docs/results") -> str:
    """Where a study's run record (its raw measurement JSON, as the study writes it) lives:
    ``OUT/records/NAME.json``; the table built from it is ``OUT/NAME.{json,md,tex}``."""
    return os.path.join(out, "records", f"{name}.json")


def save_record(name: str, raw, out: str = "docs/results") -> str:
    """Write a study's raw measurement JSON to :func:`record_path` (atomic)."""
    import json

    path = record_path(name, out)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(raw, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def render(study, out: str = "docs/results", name: str | None = None, records_dir: str | None = None,
           **table_kwargs) -> list[str]:
    """Rebuild a study's table from its stored run record without measuring anything:
    ``study.from_legacy(raw) -> (rows, sources)``, then ``study.table(rows, sources)``
    written as ``OUT/NAME.{json,md,tex}`` through :class:`ResultTable`; returns the paths."""
    from hobs_jax.experiments import records

    name = name or study.NAME
    path = os.path.join(records_dir, f"{name}.json") if records_dir else record_path(name, out)
    rows, sources = records.load(path, study.from_legacy)
    if name != study.NAME:  # a study's table under another name (e.g. one device's own)
        table_kwargs.setdefault("name", name)
    return study.table(rows, sources, **table_kwargs).write(os.path.join(out, name))


def split_prefix(prefix: str) -> tuple[str, str]:
    """``OUT/NAME`` -> (OUT as an absolute folder, NAME): a study's ``--out`` prefix."""
    return os.path.dirname(os.path.abspath(prefix)), os.path.basename(prefix)


def render_prefix(study, prefix: str) -> list[str]:
    """:func:`render` of the study's table ``PREFIX.{json,md,tex}`` from ``OUT/records/NAME.json``."""
    folder, name = split_prefix(prefix)
    return render(study, folder, name)


def publish_record(study, prefix: str, raw) -> list[str]:
    """Save ``raw`` as the run record of ``PREFIX`` (:func:`save_record`) and write the table
    built from it (:func:`render_prefix`); returns the table's paths."""
    folder, name = split_prefix(prefix)
    save_record(name, raw, folder)
    return render_prefix(study, prefix)


def parser(doc: str, out: str = "docs/results") -> argparse.ArgumentParser:
    """A benchmark script's argument parser: its docstring's first line, and ``--out``."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--out", default=out, help="folder of the tables (records under OUT/records)")
    return p


def measure_and_publish(study, argv, *args, out: str = "docs/results", name: str | None = None,
                        script: str | None = None, table_fn=None, **kwargs) -> list[str]:
    """A benchmark script's whole run: ``study.measure(*args, device=, source=, **kwargs)``
    under a record of this machine and command line, then :func:`publish` as ``name``
    (default ``study.NAME``) with ``table_fn`` (default ``study.table``)."""
    from hobs_jax.experiments import records

    key, src = records.source_here(command(script or study.SCRIPT, argv))
    rows = study.measure(*args, device=src["device"], source=key, **kwargs)
    return publish(name or study.NAME, rows, {key: src}, table_fn or study.table, out)


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
