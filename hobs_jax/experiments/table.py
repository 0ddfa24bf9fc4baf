"""Result tables: rows with named columns, goals attached, written as JSON, Markdown and
LaTeX from one object, read back with a schema check.

    t = ResultTable("table1_resnet20", "Table 1: ResNet-20 on Fashion-MNIST",
                    [Column("method", "method"), Column("acc_pruned", "top-1 after", "pct")])
    t.add({"method": "hobs", "acc_pruned": 0.9263, "target": 0.5, "macs_ratio": 0.5021,
           "dataset": "fashion_mnist", "split": "test", "device": "cpu:AMD EPYC:avx512f"})
    t.goal("H-OBS keeps >= 92% after pruning", met=True, detail="92.63%")
    t.write("docs/results/table1_resnet20")      # .json, .md, .tex

Rules every table enforces:
- *one context*: every row names the values of the table's context keys (by default the
  dataset, the evaluation split and the device key of :mod:`hobs_jax.experiments.machine`)
  and a row whose context differs from the table's is refused with a one-line
  ``ValueError``: figures from different splits or devices never share a table;
- *iso-MACs*: a row that carries ``target`` and ``macs_ratio`` and misses the target by
  more than ``iso_tolerance`` (1%) is not tabulated but listed under "Refused" with its
  figures (so is a row whose run already refused it, ``refused``);
- *schema*: the JSON names its schema and version; :meth:`ResultTable.read` refuses a
  file of another schema or version by name instead of misreading it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA = "hobs_jax.result_table"
VERSION = 1
DEFAULT_CONTEXT = ("dataset", "split", "device")
KINDS = ("text", "int", "float", "pct", "points", "share", "speedup", "pm", "ratio", "sci", "sig", "ms")

__all__ = ["Column", "Goal", "KINDS", "ResultTable", "SCHEMA", "VERSION", "iso_miss"]


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: ``key`` in the rows, ``label`` in the header, how to format (``kind``):

    text (as is), int (thousands separators), float / ratio (``digits`` decimals), sci
    (``1.2e-06``), sig (``digits`` significant digits, a whole number with thousands
    separators from ``10**digits`` on: measurements spanning decades), ms (milliseconds:
    3 decimals below 10, 1 from 10 on), pct (a
    fraction shown in percent), points (a difference of fractions in signed percentage
    points), share (a fraction as ``49.9%``), speedup (``1.23x``), pm (a ``{"mean", "std",
    "n"}`` of fractions as ``93.77 ± 0.02``). ``best``: 'max' or 'min' puts the best value
    of each group in bold.
    """

    key: str
    label: str
    kind: str = "text"
    digits: int = 2
    best: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column {self.key!r}: kind={self.kind!r}; use one of {KINDS}")
        if self.best not in ("", "max", "min"):
            raise ValueError(f"column {self.key!r}: best={self.best!r}; use 'max', 'min' or ''")

    def format(self, value: Any) -> str:
        if value is None:
            return "-"
        d = self.digits
        k = self.kind
        if k == "text":
            return str(value)
        if k == "int":
            return f"{int(value):,}"
        if k in ("float", "ratio"):
            return f"{float(value):.{d}f}"
        if k == "sci":
            return f"{float(value):.{d}e}"
        if k == "sig":
            v = float(value)
            if math.isinf(v) or math.isnan(v):
                return str(v)
            return f"{v:,.0f}" if abs(v) >= 10 ** d else f"{v:.{d}g}"
        if k == "ms":
            return f"{float(value):.3f}" if float(value) < 10 else f"{float(value):.1f}"
        if k == "pct":
            return f"{100 * float(value):.{d}f}"
        if k == "points":
            return f"{100 * float(value):+.{d}f}"
        if k == "share":
            return f"{100 * float(value):.{max(d - 1, 0)}f}%"
        if k == "speedup":
            return f"{float(value):.{d}f}x"
        mean, std = value.get("mean"), value.get("std")
        if mean is None:
            return "-"
        return f"{100 * mean:.{d}f}" + (f" ± {100 * std:.{d}f}" if std is not None else "")

    def sort_value(self, value: Any) -> float | None:
        if value is None:
            return None
        if self.kind == "pm":
            return value.get("mean")
        try:
            return float(value)
        except (TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class Goal:
    """A goal and whether the rows meet it (``met`` None: the rows cannot decide)."""

    text: str
    met: bool | None
    detail: str = ""

    def line(self) -> str:
        verdict = {True: "**met**", False: "**NOT met**", None: "not decided"}[self.met]
        return f"{self.text}: {verdict}" + (f" ({self.detail})" if self.detail else "")


def iso_miss(row: Mapping, key: str = "macs_ratio") -> float | None:
    """Relative miss ``|ratio / target - 1|`` of a row with ``target`` (None without)."""
    t, r = row.get("target"), row.get(key)
    if t is None or r is None:
        return None
    return abs(float(r) / float(t) - 1.0)


class ResultTable:
    """Rows under named columns with a context, goals, notes and sources (module doc).

    Args:
      name: file stem and identifier; title: the heading.
      columns: what the Markdown/LaTeX tables show (rows may hold more keys; JSON keeps all).
      context: the keys every row must agree on (default dataset, split, device).
      group_by: row keys whose values split the table into sections (e.g. model, target).
      iso_tolerance: the iso-MACs rule's relative tolerance (None: no pruning targets).
      description: paragraphs under the title (what was run, how it was measured).
    """

    def __init__(self, name: str, title: str, columns: Sequence[Column], *,
                 context: Sequence[str] = DEFAULT_CONTEXT, group_by: Sequence[str] = (),
                 iso_tolerance: float | None = 0.01, description: Sequence[str] = ()):
        keys = [c.key for c in columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {name!r}: duplicate column keys in {keys}")
        self.name, self.title = name, title
        self.columns = tuple(columns)
        self.context_keys = tuple(context)
        self.context: dict[str, Any] | None = None
        self.group_by = tuple(group_by)
        self.iso_tolerance = iso_tolerance
        self.description = list(description)
        self.rows: list[dict] = []
        self.refused: list[dict] = []
        self.goals: list[Goal] = []
        self.notes: list[str] = []
        self.sources: dict[str, dict] = {}
        self.meta: dict[str, Any] = {}  # JSON-only results beside the rows (e.g. a paired test)

    # -- building ---------------------------------------------------------------------
    def add(self, row: Mapping) -> bool:
        """Add one row; False when the iso-MACs rule (or its own run) refused it.
        ``ValueError`` when the row's context differs from the table's."""
        row = dict(row)
        missing = [k for k in self.context_keys if k not in row]
        if missing:
            raise ValueError(f"table {self.name!r}: row {self._label(row)} has no {missing[0]!r} "
                             f"(every row names its {', '.join(self.context_keys)})")
        ctx = {k: row[k] for k in self.context_keys}
        if self.context is None:
            self.context = ctx
        elif ctx != self.context:
            k = next(k for k in self.context_keys if ctx[k] != self.context[k])
            raise ValueError(f"table {self.name!r}: row {self._label(row)} has {k}={ctx[k]!r} but the "
                             f"table holds {k}={self.context[k]!r} rows; a table never mixes them")
        if row.get("refused"):
            self.refused.append(row)
            return False
        tol = self.iso_tolerance
        miss = iso_miss(row) if tol is not None else None
        if tol is not None and miss is not None and miss > tol:
            row["refused"] = (f"kept {row['macs_ratio']:.4f} of the MACs, target {row['target']}: "
                              f"off by {miss:.1%} > {tol:.0%} (iso-MACs)")
            self.refused.append(row)
            return False
        self.rows.append(row)
        return True

    def extend(self, rows: Iterable[Mapping]) -> ResultTable:
        for r in rows:
            self.add(r)
        return self

    def goal(self, text: str, met: bool | None, detail: str = "") -> Goal:
        g = Goal(text, None if met is None else bool(met), detail)
        self.goals.append(g)
        return g

    def note(self, text: str) -> None:
        self.notes.append(text)

    def source(self, key: str, **info) -> str:
        """Record where rows came from (``command``, ``date``, ``commit``, ``machine``, ...);
        rows name it in their ``source`` key."""
        self.sources[key] = dict(info)
        return key

    def add_sources(self, sources: Mapping[str, Mapping] | None) -> None:
        """Record those of ``sources`` that a row (tabulated or refused) names."""
        used = {r.get("source") for r in (*self.rows, *self.refused)}
        for k, v in (sources or {}).items():
            if k in used:
                self.source(k, **v)

    def _label(self, row: Mapping) -> str:
        parts = [str(row[k]) for k in ("model", "method", "label", "target", "seed") if row.get(k) is not None]
        return "/".join(parts) or "(unnamed)"

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": VERSION, "name": self.name, "title": self.title,
                "description": self.description,
                "columns": [dataclasses.asdict(c) for c in self.columns],
                "context_keys": list(self.context_keys), "context": self.context,
                "group_by": list(self.group_by), "iso_tolerance": self.iso_tolerance,
                "rows": self.rows, "refused": self.refused,
                "goals": [dataclasses.asdict(g) for g in self.goals], "notes": self.notes,
                "sources": self.sources, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "result table") -> ResultTable:
        if not isinstance(d, Mapping) or "schema" not in d:
            raise ValueError(f"{where}: not a result table (no 'schema' key); a run record of earlier "
                             "code is converted by hobs_jax.experiments.records")
        if d["schema"] != SCHEMA:
            raise ValueError(f"{where}: schema {d['schema']!r}, not {SCHEMA!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"{where}: written with {SCHEMA} version {d.get('version')!r}; this code reads "
                             f"version {VERSION} (regenerate it, or read it with the code of that version)")
        t = cls(d["name"], d["title"], [Column(**c) for c in d["columns"]],
                context=d["context_keys"], group_by=d["group_by"], iso_tolerance=d["iso_tolerance"],
                description=d.get("description", ()))
        t.context = d["context"]
        t.rows, t.refused = list(d["rows"]), list(d["refused"])
        t.goals = [Goal(**g) for g in d["goals"]]
        t.notes, t.sources, t.meta = list(d["notes"]), dict(d["sources"]), dict(d.get("meta", {}))
        return t

    @classmethod
    def read(cls, path: str) -> ResultTable:
        with open(path) as f:
            return cls.from_dict(json.load(f), where=path)

    # -- rendering --------------------------------------------------------------------
    def groups(self) -> list[tuple[tuple, list[dict]]]:
        """(group values, rows) in first-seen order."""
        out: dict[tuple, list[dict]] = {}
        for r in self.rows:
            out.setdefault(tuple(r.get(k) for k in self.group_by), []).append(r)
        return list(out.items())

    def _cells(self, rows: list[dict]) -> list[list[tuple[str, bool]]]:
        best = {}
        for c in self.columns:
            vals = [v for v in (c.sort_value(r.get(c.key)) for r in rows) if v is not None]
            if c.best and vals:
                best[c.key] = max(vals) if c.best == "max" else min(vals)
        return [[(c.format(r.get(c.key)), c.key in best and c.sort_value(r.get(c.key)) == best[c.key])
                 for c in self.columns] for r in rows]

    def _group_title(self, values: tuple) -> str:
        return ", ".join(f"{k} {v}" for k, v in zip(self.group_by, values))

    def _context_line(self) -> str:
        if not self.context:
            return ""
        return "Context: " + "; ".join(f"{k} `{v}`" for k, v in self.context.items()) + "."

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for p in self.description:
            lines += [p, ""]
        if self._context_line():
            lines += [self._context_line(), ""]
        for values, rows in self.groups():
            if self.group_by:
                lines += [f"## {self._group_title(values)}", ""]
            lines.append("| " + " | ".join(c.label for c in self.columns) + " |")
            lines.append("|" + "|".join("---" if c.kind == "text" else "---:" for c in self.columns) + "|")
            for cells in self._cells(rows):
                lines.append("| " + " | ".join(f"**{s}**" if b else s for s, b in cells) + " |")
            lines.append("")
        if not self.rows:
            lines += ["(no rows)", ""]
        if self.goals:
            lines += ["## Goals", ""] + [f"* {g.line()}" for g in self.goals] + [""]
        if self.refused:
            lines += ["## Refused rows (not tabulated)", ""]
            lines += [f"* {self._label(r)}: {r['refused']}" for r in self.refused] + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"* {n}" for n in self.notes] + [""]
        if self.sources:
            lines += ["## Sources", ""]
            for key, info in self.sources.items():
                cmd = info.get("command")
                vers = info.get("versions") or {}
                shown = {k: v for k, v in info.items() if k not in ("command", "versions", "device", "dirty")
                         and v not in (None, "")}
                if vers:
                    shown["versions"] = ", ".join(f"{p} {vers[p]}" for p in ("jax", "flax", "torch") if vers.get(p))
                if info.get("dirty"):
                    shown["commit"] = f"{shown.get('commit')} (with uncommitted changes)"
                rest = ", ".join(f"{k} {v}" for k, v in shown.items())
                lines.append(f"* `{key}`: " + (f"`{cmd}`" if cmd else "") + (f" ({rest})" if rest else ""))
            lines.append("")
        return "\n".join(lines)

    def to_latex(self) -> str:
        align = "".join("l" if c.kind == "text" else "r" for c in self.columns)
        lines = [f"% {self.title} -- generated from {self.name}.json; do not edit",
                 f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                 " & ".join(_tex(c.label) for c in self.columns) + " \\\\", "\\midrule"]
        for i, (values, rows) in enumerate(self.groups()):
            if self.group_by:
                if i:
                    lines.append("\\midrule")
                title = _tex(self._group_title(values))
                lines.append(f"\\multicolumn{{{len(self.columns)}}}{{l}}{{\\emph{{{title}}}}} \\\\")
            for cells in self._cells(rows):
                lines.append(" & ".join(f"\\textbf{{{_tex(s)}}}" if b else _tex(s) for s, b in cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)

    def write(self, prefix: str) -> list[str]:
        """``prefix``.json, .md and .tex, each written atomically; returns the paths."""
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        out = []
        for ext, text in (("json", json.dumps(self.to_dict(), indent=1, default=_plain) + "\n"),
                          ("md", self.to_markdown()), ("tex", self.to_latex())):
            path = f"{prefix}.{ext}"
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
            out.append(path)
        return out


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
