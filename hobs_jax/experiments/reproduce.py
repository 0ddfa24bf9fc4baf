"""``make reproduce`` (``python -m hobs_jax.experiments.reproduce``): regenerate the tables
and figures under ``docs/results/`` that this machine can produce, then README's headline
figures from them, and say which were measured now, which rebuilt from their run records
and which were not reproduced (with the command that would).

    python -m hobs_jax.experiments.reproduce --quick   # make reproduce QUICK=1: minutes on a 2-core CPU
    python -m hobs_jax.experiments.reproduce           # make reproduce: every CPU-feasible measurement
    python -m hobs_jax.experiments.reproduce --only ablation_resnet20   # make reproduce ONLY=ablation_resnet20

``--quick`` measures the catalog entries marked quick (:mod:`hobs_jax.experiments.tables.catalog`:
the H-OBS sensitivity and the 3-seed stability tables on ResNet-20) and the cheap studies of
:data:`QUICK_STUDIES`, and rebuilds every other table from its run record under
``docs/results/records/`` (every study's raw measurement JSON; the bench suite's
``results.json`` in its run folder), which reproduces the published figures exactly where the
measurement itself takes hours (or a GPU). The full mode also measures every catalog sweep
and the CPU studies of :data:`CPU_STUDIES` afresh. :data:`NOT_HERE` lists what neither mode
remeasures and why; their tables are still rebuilt from their records in both modes (every
table goes through :class:`~hobs_jax.experiments.table.ResultTable`).

``--only NAME[,NAME...]`` (catalog names, as ``python -m hobs_jax.experiments.tables --list``
prints them) makes those entries and nothing else, in the chosen mode: without ``--quick``
each is measured (a catalog sweep, or its study's benchmark script where the full mode runs
it), with ``--quick`` only the quick ones are, the others rebuilt from their records. An
unknown name fails in one line that lists the known ones, before anything runs. The
module ablation (``--only ablation_resnet20``, 27 rows over 3 seeds) took 45.8 CPU-minutes
on the shared 2-core CPU (docs/results/HISTORY.md); ``table1_resnet20`` has no run record yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

# Benchmark scripts re-measured on this CPU: name -> (arguments, seconds on the 2-core CPU).
QUICK_STUDIES = {"workdir_lock": ()}
CPU_STUDIES = {"ast_controller": (), "data_pipeline": (), "graph": ("--repeats", "7"), "hessian_gram": (),
               "hobs_compiles": (), "hobs_refit_parts": (), "train_throughput": (),
               "hobs_cost": ("--cases", "resnet56,resnet56-refit,resnet50")}
# Scripts whose --out is a file path or prefix rather than the results folder.
OUT_SUFFIX = {"ast_controller": ""}
# Published results neither mode reruns: why, and the command that does.
NOT_HERE = {
    # Their fresh ResNet-20 counterparts, table1_resnet20 and ablation_resnet20, are catalog sweeps
    # the full mode measures (--only picks one).
    "oneshot_fmnist, rspar_fmnist* (and table1_fmnist, ablation_fmnist from them)":
        ("hours of CPU (fine-tuning curves of every method at two targets, 3 R-SPAR seeds)",
         "python benchmarks/oneshot_fmnist.py ...; python benchmarks/rspar_fmnist.py ..."),
    "fmnist_baselines": ("training on the H100 (checkpoints/ ships the result)",
                         "python benchmarks/fmnist_baselines.py"),
    "block_ell*, block_ell_e2e_*, block_ell_tiles": ("GPU rows (H100)", "python benchmarks/block_ell.py"),
    "jax_vs_torch, the bench suite folders, alignment, aligned_allocation_*": (
        "hours of single-thread timing per runtime", "python benchmarks/jax_vs_torch.py --threads 1 --clock cpu"),
    "ast_fmnist*, anymodel_fmnist, rspar_latency, recovery_fmnist_resnet56*": (
        "training or R-SPAR searches of tens of minutes to hours",
        "python -m hobs_jax.experiments.ast_fmnist; python benchmarks/anymodel_fmnist.py; python "
        "benchmarks/rspar_latency.py; python -m hobs_jax.experiments.recovery ..."),
    "hobs_blocks, hobs_blocks_refit": (
        "65 wall-minutes on the shared 2-core CPU (36 for the three last blocks, 29 for the refit's three ways on two "
        "models)", "python benchmarks/hobs_blocks.py; python benchmarks/hobs_blocks.py "
        "--refit"),
}


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(name: str, args=(), out: str = "docs/results") -> float:
    """``python benchmarks/NAME.py ARGS`` of this checkout in a child process (its own JAX
    and thread state); returns its wall seconds, raises with the log tail on failure."""
    repo = _repo()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    target = os.path.join(out, name + OUT_SUFFIX[name]) if name in OUT_SUFFIX else out
    cmd = [sys.executable, os.path.join("benchmarks", f"{name}.py"), *args, "--out", target]
    t0 = time.time()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}): {tail[0]}")
    return time.time() - t0


def select(only: str | Sequence[str] | None) -> list[str] | None:
    """The catalog names ``--only`` picks (a comma-separated string or a list; order kept,
    duplicates dropped), or None for every entry. One-line ``ValueError`` naming the unknown
    ones and listing the known ones."""
    from hobs_jax.experiments.tables.catalog import ENTRIES

    if only is None:
        return None
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only)]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError(f"--only names no entry; known: {', '.join(ENTRIES)}")
    bad = [n for n in names if n not in ENTRIES]
    if bad:
        raise ValueError(f"--only: unknown {', '.join(map(repr, bad))}; known: {', '.join(ENTRIES)}")
    return names


def _mentions(key: str, name: str) -> bool:
    """Whether a :data:`NOT_HERE` key (names, ``prefix*`` patterns) covers catalog ``name``."""
    return any(t == name or (t.endswith("*") and name.startswith(t[:-1]))
               for t in re.split(r"[\s,()]+", key) if t)


def reproduce(quick: bool, out: str = "docs/results", workdir: str = "runs/experiments",
              readme: str = "README.md", only: str | Sequence[str] | None = None) -> dict:
    """Every step (of the entries ``only`` names, when given: :func:`select`); returns
    ``{"computed", "records", "missing", "not_here", "seconds", "cpu_seconds"}``."""
    from hobs_jax.experiments import readme as readme_mod
    from hobs_jax.experiments.tables.catalog import ENTRIES, Run

    names = select(only)
    entries = {n: ENTRIES[n] for n in names} if names is not None else dict(ENTRIES)
    t0, c0 = time.time(), _cpu_seconds()
    run = Run(workdir=workdir, out=out, mode="quick" if quick else "full")
    how = {n: e.how(run) for n, e in entries.items()}
    from hobs_jax.experiments.sweep import plan

    for n, e in entries.items():  # every sweep planned (so validated) before the first row runs
        if how[n] == "computed":
            for s in e.sweeps():
                plan(s)
    studies = dict(QUICK_STUDIES) if quick else {**QUICK_STUDIES, **CPU_STUDIES}
    studies = {n: a for n, a in studies.items() if n in entries}
    for n, e in entries.items():
        if how[n] != "missing" and n not in studies:  # a study measured below writes its own table
            print(f"[{how[n]}] {n}", flush=True)
            e.make(run)
    for name, args in studies.items():
        s = run_script(name, args, out)
        how[name] = "computed"
        print(f"[computed] {name} ({s:.0f} s)", flush=True)
    if readme and os.path.exists(readme):
        with open(readme) as f:
            text = f.read()
        new = readme_mod.splice(text, readme_mod.render(out))
        if new != text:
            with open(readme, "w") as f:
                f.write(new)
    report: dict[str, Any] = {h: sorted(n for n, v in how.items() if v == h)
                              for h in ("computed", "records", "missing")}
    report["not_here"] = {k: f"{why} ({cmd})" for k, (why, cmd) in NOT_HERE.items()
                          if names is None or any(_mentions(k, n) for n in names)}
    report["only"] = names
    report["seconds"] = round(time.time() - t0, 1)
    report["cpu_seconds"] = round(_cpu_seconds() - c0, 1)
    return report


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children: on a shared
    machine the wall time says more about the other jobs than about this run, and an
    idle 2-core CPU runs it in at most this long (at least half of it)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hobs_jax.experiments.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the quick entries and studies; the rest from run records")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--workdir", default="runs/experiments", help="the sweep rows' cache (finished rows are reused)")
    p.add_argument("--readme", default="README.md", help="README whose headline block is rendered ('' skips)")
    p.add_argument("--only", metavar="NAME[,NAME...]", help="make only these catalog entries "
                   "(python -m hobs_jax.experiments.tables --list)")
    a = p.parse_args(argv)
    try:
        only = select(a.only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hobs_jax").setLevel(logging.INFO)
    from hobs_jax import compile_cache

    compile_cache.enable(compile_cache.default_dir())
    r = reproduce(a.quick, a.out, a.workdir, a.readme, only)
    what = (" (quick)" if a.quick else "") + (" --only " + ",".join(only) if only else "")
    print(f"\nreproduce{what} done in {r['seconds'] / 60:.1f} min "
          f"({r['cpu_seconds'] / 60:.1f} CPU-min)")
    print("measured now: " + (", ".join(r["computed"]) or "-"))
    print("rebuilt from run records: " + (", ".join(r["records"]) or "-"))
    if r["missing"]:
        print("not built (no run record; the full mode measures them): " + ", ".join(r["missing"]))
    for k, why in r["not_here"].items():
        print(f"not remeasured (rebuilt from its record): {k}: {why}")
    os.makedirs(a.workdir, exist_ok=True)
    # the wall time, kept with the sweep rows (a partial run beside the whole one, not over it)
    with open(os.path.join(a.workdir, "reproduce_only.json" if only else "reproduce.json"), "w") as f:
        json.dump(dict(r, quick=a.quick), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
