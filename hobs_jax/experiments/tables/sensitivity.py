"""H-OBS sensitivity to its hyperparameters: one hyperparameter changed at a time from the
defaults (dampening, calibration images, channels removed per step, refit images), the
default row marked, accuracy and the difference to the default run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.experiments.tables.common import ACC, oneshot_acc


@dataclasses.dataclass(frozen=True)
class Param:
    """A hyperparameter: its name in the table, its variant key (a method option, or a
    dotted pipeline key) and the values tried, the default among them."""

    name: str
    key: str
    values: tuple[Any, ...]
    default: Any

    def label(self, method: str, value: Any) -> str:
        return method if value == self.default else f"{method}@{self.key}={value}"

    def variants(self, method: str) -> list[str]:
        return [self.label(method, v) for v in self.values]


COLUMNS = (Column("param", "hyperparameter"), Column("value_text", "value"),
           Column("acc_oneshot", "one-shot", **ACC), Column("acc_final", "after BN re-est.", **ACC, best="max"),
           Column("delta", "vs default", kind="points", digits=2),
           Column("macs_ratio", "MACs kept", kind="ratio", digits=4),
           Column("prune_s", "prune stage (s)", kind="float", digits=1))


def build(name: str, title: str, rows: Sequence[Mapping], params: Sequence[Param], method: str = "hobs", *,
          description: Sequence[str] = ()) -> ResultTable:
    t = ResultTable(name, title, COLUMNS, group_by=("model", "target"), description=description)
    by_label: dict[tuple, Mapping] = {(r["model"], r["target"], r["label"]): r for r in rows}
    for model, target in dict.fromkeys((r["model"], r["target"]) for r in rows):
        base = by_label.get((model, target, method))
        for p in params:
            for v in p.values:
                r = by_label.get((model, target, p.label(method, v)))
                if r is None:
                    t.note(f"{model} {target}: {p.name}={v} not run")
                    continue
                acc = oneshot_acc(r)
                base_acc = oneshot_acc(base) if base else None
                t.add(dict(r, param=p.name, value=v,
                           value_text=f"{v} (default)" if v == p.default else str(v), acc_final=acc,
                           delta=None if acc is None or base_acc is None else acc - base_acc,
                           prune_s=(r.get("stage_seconds") or {}).get("prune")))
    t.note("Each row changes one hyperparameter from the defaults; 'vs default' is its difference to "
           "the default row (the same run appears once per hyperparameter). Prune-stage seconds "
           "include the two one-shot evaluations and depend on the machine's load.")
    return t
