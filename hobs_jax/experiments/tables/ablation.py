"""Module ablation: each module of the method as a pair of runs, with and without it, at
the same model, target and measurement; the difference is what the module is worth.

A :class:`Pair` names the two variants (row labels) and what is compared: ``oneshot`` (the
network the prune stage hands on), ``finetuned`` (after the longest budget) or
``latency`` (speedup over dense at batch 1). Rows of several seeds are averaged (``n``
says how many), and the spread of the module's gain over the seeds both sides ran is given
as the standard deviation of the per-seed differences (a paired spread: the seed draws the
same calibration images for both runs of a pair). "Without BN re-estimation" may be read off the same run
(``before_bn=True``: its accuracy right after pruning, before re-estimation), which is
exactly what the prune stage measured.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence

from hobs_jax.experiments.table import Column, ResultTable, iso_miss
from hobs_jax.experiments.tables.common import ACC, oneshot_acc, speedup

MEASURES = {"oneshot": ("one-shot top-1", oneshot_acc),
            "finetuned": ("fine-tuned top-1", lambda r: r.get("acc_finetuned")),
            "latency": ("speedup b1", lambda r: speedup(r, 1))}


@dataclasses.dataclass(frozen=True)
class Pair:
    module: str
    with_label: str
    without_label: str
    measure: str = "oneshot"
    before_bn: bool = False  # "without": the with-run's accuracy before BN re-estimation
    budgets: tuple[int, ...] = ()  # the rows' fine-tuning budgets (rows of other sweeps are not mixed in)
    latency: bool = False  # only rows with a latency measurement

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"ablation pair {self.module!r}: measure {self.measure!r}; use one of {sorted(MEASURES)}")


COLUMNS = (Column("module", "module"), Column("with_label", "with (row)"), Column("without_label", "without (row)"),
           Column("measure_name", "measure"), Column("n", "seeds", kind="int"),
           Column("acc_with", "with", **ACC), Column("acc_without", "without", **ACC),
           Column("delta", "module's gain", kind="points", digits=2),
           Column("delta_std", "gain std (seeds)", kind="float", digits=2),
           Column("speed_with", "speedup with", kind="speedup"),
           Column("speed_without", "speedup without", kind="speedup"),
           Column("macs_with", "MACs kept with", kind="ratio", digits=4),
           Column("macs_without", "MACs kept without", kind="ratio", digits=4))


def _paired_std(with_rows, without_rows, fn) -> float | None:
    """Standard deviation (in percentage points) of the per-seed difference with - without
    over the seeds both sides have; None below two such seeds."""
    a = {r.get("seed"): fn(r) for r in with_rows}
    b = {r.get("seed"): fn(r) for r in without_rows}
    d = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
    return 100 * statistics.stdev(d) if len(d) > 1 else None


def _mean(rows, fn):
    v = [fn(r) for r in rows]
    v = [x for x in v if x is not None]
    return statistics.fmean(v) if v else None


def pair_row(pair: Pair, with_rows: Sequence[Mapping], without_rows: Sequence[Mapping], tol: float) -> dict:
    name, fn = MEASURES[pair.measure]
    if pair.before_bn:
        without_rows = [dict(r, acc_bn_recalibrated=None, label=pair.without_label) for r in with_rows]
    first = with_rows[0]
    out = {k: first.get(k) for k in ("model", "target", "dataset", "split", "device")}
    for k in ("dataset", "split", "device"):
        other = {r.get(k) for r in without_rows}
        if other != {out[k]}:
            raise ValueError(f"ablation pair {pair.module!r}: rows of {k} {sorted(map(str, other))} against "
                             f"{out[k]!r}; a pair never mixes them")
    a, b = _mean(with_rows, fn), _mean(without_rows, fn)
    out.update(module=pair.module, with_label=pair.with_label, without_label=pair.without_label,
               measure=pair.measure, measure_name=name, n=min(len(with_rows), len(without_rows)),
               acc_with=a if pair.measure != "latency" else None,
               acc_without=b if pair.measure != "latency" else None,
               delta=None if a is None or b is None or pair.measure == "latency" else a - b,
               delta_std=None if pair.measure == "latency" else _paired_std(with_rows, without_rows, fn),
               speed_with=_mean(with_rows, lambda r: speedup(r, 1)),
               speed_without=_mean(without_rows, lambda r: speedup(r, 1)),
               macs_with=_mean(with_rows, lambda r: r.get("macs_ratio")),
               macs_without=_mean(without_rows, lambda r: r.get("macs_ratio")))
    misses = [(r["label"], m) for r in (*with_rows, *without_rows) if (m := iso_miss(r)) is not None]
    bad = [(lbl, m) for lbl, m in misses if m > tol]
    if bad:
        out["refused"] = "; ".join(f"{lbl} misses its MACs target by {m:.1%} > {tol:.0%} (iso-MACs)" for lbl, m in bad)
    return out


def build(name: str, title: str, rows: Sequence[Mapping], pairs: Sequence[Pair], *,
          description: Sequence[str] = (), sources: Mapping[str, dict] | None = None,
          tol: float = 0.01) -> ResultTable:
    """One table row per pair and (model, target) group that has both sides; pairs with a
    missing side are listed in the notes."""
    t = ResultTable(name, title, COLUMNS, group_by=("model", "target"), iso_tolerance=None,
                    description=description)
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"]), []).append(r)
    missing = []

    def pick(rows_, label, p):
        by_seed = {}
        fn = MEASURES[p.measure][1]
        for r in rows_:
            same_budgets = tuple(r.get("budgets") or ()) == tuple(p.budgets)
            if (r["label"] == label and (fn(r) is not None or p.before_bn) and same_budgets
                    and (not p.latency or r.get("latency_speedup"))):
                by_seed.setdefault(r.get("seed"), r)  # one run per seed (sweeps may share a variant)
        return list(by_seed.values())

    for (model, target), grp in groups.items():
        ok = [r for r in grp if not r.get("refused")]
        for p in pairs:
            w, wo = pick(ok, p.with_label, p), pick(ok, p.without_label, p)
            if not w or (not wo and not p.before_bn):
                missing.append(f"{p.module} ({model}, {target})")
                continue
            t.add(pair_row(p, w, wo, tol))
    if missing:
        t.note("Pairs without both runs (not measured): " + ", ".join(missing) + ".")
    t.add_sources(sources)
    return t
