"""``python -m hobs_jax.experiments.tables NAME...``: make the named tables (``--list``
shows them; ``--quick`` all quick ones; ``--all`` every one)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    from hobs_jax.experiments.tables.catalog import ENTRIES, Run

    p = argparse.ArgumentParser(prog="python -m hobs_jax.experiments.tables", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="tables to make (see --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--quick", action="store_true", help="every table; compute the quick ones, rebuild the "
                   "others from their run records")
    p.add_argument("--all", action="store_true", help="every table, computing every one that can be")
    p.add_argument("--records-only", action="store_true", help="compute nothing: rebuild from run records")
    p.add_argument("--workdir", default="runs/experiments", help="the sweep rows' cache")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--cached-only", action="store_true", help="build from finished rows; run nothing")
    a = p.parse_args(argv)
    if a.list:
        for e in ENTRIES.values():
            print(f"{e.name:24s} {'quick' if e.quick else 'full ':5s} {e.summary}")
        return 0
    names = list(a.names) or (list(ENTRIES) if a.all or a.quick or a.records_only else [])
    bad = [n for n in names if n not in ENTRIES]
    if bad or not names:
        print(f"error: unknown table {bad[0]!r}; see --list" if bad else "error: name tables, or --quick/--all",
              file=sys.stderr)
        return 2
    from hobs_jax.experiments.sweep import plan

    mode = "records" if a.records_only else "quick" if a.quick else "full"
    run = Run(workdir=a.workdir, out=a.out, mode=mode, cached_only=a.cached_only)
    for n in names:  # every sweep planned (and so validated) before the first row runs
        if ENTRIES[n].computes(run):
            for s in ENTRIES[n].sweeps():
                plan(s)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hobs_jax").setLevel(logging.INFO)
    from hobs_jax import compile_cache

    compile_cache.enable(compile_cache.default_dir())
    made = {}
    for n in names:
        how = ENTRIES[n].how(run)
        if how == "missing":
            print(f"skipped {n}: no run record under {run.records} (computed by: python -m "
                  f"hobs_jax.experiments.tables {n})", file=sys.stderr)
        else:
            for path in ENTRIES[n].make(run):
                print(path)
        made[n] = how
    print("tables: " + "; ".join(f"{h}: {', '.join(k for k, v in made.items() if v == h)}"
                                 for h in ("computed", "records", "missing") if h in made.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
