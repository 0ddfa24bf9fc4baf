"""Table 1 style: per method, top-1 before and after pruning (after the longest
fine-tuning budget, or one-shot), the difference, MACs and parameters removed, and the
latency speedup in a named runtime."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.experiments.tables.common import ACC, oneshot_acc, speedup

COLUMNS = (
    Column("label", "method"),
    Column("acc_dense", "top-1 before", **ACC),
    Column("oneshot", "one-shot (BN re-est.)", **ACC, best="max"),
    Column("after", "top-1 after", **ACC, best="max"),
    Column("after_how", "after"),
    Column("diff", "difference", kind="points", digits=2),
    Column("macs_removed", "MACs removed", kind="share", digits=2),
    Column("params_removed", "params removed", kind="share", digits=2),
)


def table1_row(r: Mapping) -> dict:
    """A run's Table 1 cells: "after" is the accuracy after its longest fine-tuning budget
    (none when a row with budgets was not fine-tuned), or one-shot for rows without budgets."""
    after = r.get("acc_finetuned") if r.get("budgets") else oneshot_acc(r)
    steps = max((int(s) for s, a in (r.get("acc_by_steps") or {}).items() if a is not None), default=0)
    out = dict(r)
    out.update(oneshot=oneshot_acc(r), after=after,
               after_how=(f"+{steps} steps" if r.get("acc_finetuned") is not None else
                          "not fine-tuned" if r.get("budgets") else "one-shot"),
               diff=None if after is None or r.get("acc_dense") is None else after - r["acc_dense"],
               macs_removed=None if r.get("macs_ratio") is None else 1 - r["macs_ratio"],
               params_removed=None if r.get("params_ratio") is None else 1 - r["params_ratio"],
               speedup_b1=speedup(r, 1), speedup_b64=speedup(r, 64))
    return out


def build(name: str, title: str, rows: Iterable[Mapping], *, description: Sequence[str] = (),
          sources: Mapping[str, dict] | None = None) -> ResultTable:
    rows = list(rows)
    runtimes = sorted({str(r["latency_runtime"]) for r in rows if r.get("latency_runtime")})
    where = f" ({runtimes[0]})" if len(runtimes) == 1 else ""
    cols = COLUMNS + (Column("speedup_b1", f"speedup b1{where}", kind="speedup"),
                      Column("speedup_b64", f"speedup b64{where}", kind="speedup"))
    if len(runtimes) > 1:
        cols += (Column("latency_runtime", "latency runtime"),)
    t = ResultTable(name, title, cols, group_by=("model", "target"), description=description)
    for r in rows:
        t.add(table1_row(r))
    t.add_sources(sources)
    return t
