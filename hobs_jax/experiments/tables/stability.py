"""Stability over seeds: per method, mean and standard deviation of top-1 over at least
three seeds (the seed draws the calibration images and the fine-tuning order), and a paired
t-test between the best method and the next best that shares two or more seeds with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.experiments.tables.common import final_acc, mean_std, oneshot_acc, paired_test

COLUMNS = (Column("label", "method"), Column("n", "seeds", kind="int"),
           Column("seeds_text", "seed list"),
           Column("acc_oneshot_ms", "right after pruning", kind="pm"),
           Column("acc_bn_ms", "one-shot (BN re-est.)", kind="pm", best="max"),
           Column("acc_final_ms", "fine-tuned", kind="pm", best="max"),
           Column("macs_ratio", "MACs kept (mean)", kind="ratio", digits=4))


def build(name: str, title: str, rows: Sequence[Mapping], *, min_seeds: int = 3,
          measure: str = "oneshot", description: Sequence[str] = (),
          sources: Mapping[str, dict] | None = None) -> ResultTable:
    """``measure``: 'oneshot' or 'finetuned': what ranks the methods and what the paired
    test compares. Rows from several devices (seeds added on another machine) make a table
    whose context is dataset and split only, with a note per device naming its rows: the
    columns are accuracies and MACs, which depend on the seed, not on the CPU (float
    rounding aside); latency never goes in this table."""
    fn = oneshot_acc if measure == "oneshot" else final_acc
    devices = sorted({str(r.get("device")) for r in rows})
    # Seeds added later on another machine (a restored record plus new seeds): the table
    # holds accuracies only, so it may span devices, and says which ran where.
    t = ResultTable(name, title, COLUMNS, group_by=("model", "target"), iso_tolerance=None,
                    description=description, context=("dataset", "split", *(("device",) if len(devices) == 1 else ())))
    if len(devices) > 1:
        for d in devices:
            ran: dict[str, list] = {}
            for r in rows:
                if str(r.get("device")) == d:
                    ran.setdefault(r["label"], []).append(r["seed"])
            t.note(f"measured on `{d}`: " + "; ".join(f"{label} seed {','.join(map(str, sorted(set(s))))}"
                                                      for label, s in sorted(ran.items())))
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"]), {}).setdefault(r["label"], []).append(r)
    from hobs_jax.experiments.table import iso_miss

    for (model, target), by_label in groups.items():
        summary = []
        for label, rs in by_label.items():
            bad = [r for r in rs if r.get("refused") or (iso_miss(r) or 0) > 0.01]
            rs = [r for r in rs if r not in bad]
            for r in bad:
                t.refused.append(dict(r, refused=r.get("refused") or f"misses its MACs target by {iso_miss(r):.1%}"))
            if not rs:
                continue
            seeds = sorted(r["seed"] for r in rs)
            row = {k: rs[0].get(k) for k in ("model", "target", "dataset", "split", "label", "method")}
            row["device"] = ", ".join(sorted({str(r.get("device")) for r in rs}))
            row.update(n=len(rs), seeds=seeds, seeds_text=",".join(map(str, seeds)),
                       acc_oneshot_ms=mean_std([r.get("acc_oneshot") for r in rs]),
                       acc_bn_ms=mean_std([oneshot_acc(r) for r in rs]),
                       acc_final_ms=mean_std([r.get("acc_finetuned") for r in rs]),
                       macs_ratio=mean_std([r.get("macs_ratio") for r in rs])["mean"],
                       by_seed={r["seed"]: fn(r) for r in rs})
            t.add(row)
            summary.append(row)
            if len(rs) < min_seeds:
                t.note(f"{model} {target} {label}: {len(rs)} seed(s), fewer than {min_seeds}")
        ranked = sorted((r for r in summary if mean_std(list(r["by_seed"].values()))["mean"] is not None),
                        key=lambda r: -mean_std(list(r["by_seed"].values()))["mean"])
        if len(ranked) >= 2:
            # Against the next best row that shares two or more seeds with the best (a row
            # run on one seed cannot be tested), else the next best.
            a = ranked[0]
            b = next((r for r in ranked[1:] if len(set(r["by_seed"]) & set(a["by_seed"])) >= 2), ranked[1])
            test = paired_test(a["by_seed"], b["by_seed"])
            t.meta.setdefault("paired_tests", []).append(dict(test, model=model, target=target, a=a["label"],
                                                              b=b["label"], measure=measure))
            if test["p"] is not None:
                t.note(f"{model} {target}: paired t-test ({measure}) {a['label']} vs {b['label']} over seeds "
                       f"{test['seeds']}: mean difference {100 * test['mean_diff']:+.2f} points, t = {test['t']:.2f}, "
                       f"p = {test['p']:.3g} (scipy.stats.ttest_rel)")
            else:
                t.note(f"{model} {target}: no paired test between {a['label']} and {b['label']}: {test['why']}")
    t.add_sources(sources)
    return t
