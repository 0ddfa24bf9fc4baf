"""The run record, result table (through ResultTable) and curve plot of
``benchmarks/oneshot_fmnist.py`` (from its cached rows)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os

from hobs_jax.experiments.records import OWN_KEYS

KEYS = ("model", "method", "framework", "target_macs_ratio", "macs_ratio", "params_ratio",
        "acc_dense", "acc_oneshot", "acc_bn_recalibrated", "acc_finetuned", "acc_by_steps",
        "latency_speedup", *OWN_KEYS)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


RESNET_RECIPE = ("SGD momentum 0.9, lr 0.01 cosine to 0, weight decay 5e-4, batch 128, augmentation, seed 0, "
                 "KD off")


def recipe_text(c) -> str:
    """A fine-tuning section (``train`` ConfigDict) in words (the study's training data is
    always augmented); the pipeline's default (the ResNets' recipe) in the wording the
    committed tables use."""
    from hobs_jax.pipeline import base_config
    if c.to_dict() == base_config("resnet20").finetune.to_dict():
        return RESNET_RECIPE
    opt = (f"SGD momentum {c.momentum:g}{' Nesterov' if c.nesterov else ''}" if c.optimizer == "sgd"
           else {"adamw": "AdamW", "adam": "Adam"}.get(c.optimizer, c.optimizer))
    warm = f" after {c.warmup_fraction:g} of the steps of warm-up" if c.warmup_fraction else ""
    return (f"{opt}, lr {c.lr:g} cosine to 0{warm}, weight decay {c.weight_decay:g}, batch {c.batch_size}, "
            f"augmentation, seed {c.seed}, "
            f"KD {'on' if c.kd.enabled else 'off'}")


def description(recipes: dict[str, str] | None = None) -> list[str]:
    """The table's description; ``recipes``: {model: recipe_text} of the models tabulated
    (None: the ResNets' recipe)."""
    texts = sorted(set((recipes or {}).values()))
    if not texts or texts == [RESNET_RECIPE]:
        ft = f"one recipe for every row ({RESNET_RECIPE})"
    elif len(texts) == 1:
        ft = f"one recipe for every row ({texts[0]})"
    else:
        ft = "one recipe for every row of a model (" + "; ".join(
            f"{m}: {t}" for m, t in sorted((recipes or {}).items())) + ")"
    return [
        "Accuracy: Fashion-MNIST test set (10,000 images), top-1 in %; MACs/params: our analytic counter at 28x28x1, "
        "kept fraction of the dense model's. BN re-estimation: the same 2048 training images (seed 0, no "
        f"augmentation) for every row. Fine-tuning: {ft}, started from the BN-re-estimated network; one run of the "
        "longest length, evaluated at its checkpoints.",
    "Latency speedup: dense / pruned median time, jitted Flax on this CPU, batch 1 and 64, timed alternately in one "
    "process (Torch-Pruning's models are converted back to Flax, so every row is timed by the same runtime). "
    "Iso-MACs: a row whose MACs miss its target by more than 1% is refused (listed, never tabulated)."]


DESCRIPTION = description()


def write_report(records_: list[dict], workdir: str, out: str, command: str, models: list[str],
                 targets: list[float], rows: list[str], notes: list[str] | None = None,
                 recipes: dict[str, str] | None = None, seeds: list[int] | None = None,
                 title: str = "One-shot pruning on Fashion-MNIST: ours vs Torch-Pruning at equal MACs") -> list[str]:
    """The run record ``OUT's folder/records/NAME.json`` (rows of this selection and of
    ``seeds``, refused ones included, with this machine and command as their source) and the
    table built from it through ResultTable (:func:`hobs_jax.experiments.tables.oneshot.build`:
    goals included; the first seed's rows) as ``OUT.{json,md,tex}`` with ``OUT_curve.png``;
    with several seeds also ``OUT_seeds.{json,md,tex}``: mean and std over seeds per row
    (:func:`hobs_jax.experiments.tables.stability.build`) and the R-SPAR goal per seed.
    Returns the paths."""
    from hobs_jax.experiments import records
    from hobs_jax.experiments.tables import oneshot, stability
    from hobs_jax.experiments.tables.common import plot_curves

    seeds = list(seeds or [0])
    sel = [r for r in records_ if r["model"] in models and r.get("seed", 0) in seeds
           and any(abs(r["target_macs_ratio"] - t) < 1e-9 for t in targets) and r["method"] in rows]
    done = [r for r in sel if "refused" not in r]
    refused = [r for r in sel if "refused" in r]
    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    key, src = records.source_here(command, packages=f"jax {_version('jax')}, flax {_version('flax')}, torch "
                                   f"{_version('torch')}, torch-pruning {_version('torch-pruning')}",
                                   date_written=datetime.date.today().isoformat())
    made = sorted({c for r in sel for c in (r.get("command"), r.get("finetune_command")) if c})
    if made:
        src["rows_made_by"] = "; ".join(made)
    steps = sorted({int(s) for r in done for s in r.get("acc_by_steps", {})})
    base = {"dataset": "fashion_mnist", "split": "test", "device": src["device"], "source": key,
            "latency_runtime": "Flax jit, wall clock", "seed": 0, "budgets": steps}
    all_rows = records.oneshot_rows([{k: r.get(k) for k in KEYS} for r in done], refused=refused, base=base)
    # Rows restored from a published record (oneshot_cache.restore_rows) keep their own source.
    sources = {**{r["source"]: r["source_entry"] for r in sel if r.get("source_entry")}, key: src}
    paths = [records.save(os.path.join(folder, "records", f"{name}.json"), all_rows, sources)]
    table_rows = [r for r in all_rows if r.get("seed", 0) == seeds[0]]
    first = [r for r in sel if r.get("seed", 0) == seeds[0]]
    t = oneshot.build(name, title, table_rows, sources=sources, description=description(recipes),
                      goal_model=None if set(models) - {"resnet56", "resnet20"} else "resnet56")
    if key not in t.sources:  # every row restored from an earlier record: name what wrote this page
        t.source(key, **src)
    if len(seeds) > 1:
        t.note(f"seed {seeds[0]} of {seeds}; mean and std over the seeds: `{name}_seeds.md`")
        ts = stability.build(f"{name}_seeds", f"{title}: mean and std over seeds {','.join(map(str, seeds))}",
                             [r for r in all_rows if not r.get("refused")], min_seeds=len(seeds),
                             sources=sources, description=description(recipes) + [
                                 "Seed s draws the 2048 calibration images (seed 0: the calibrate stage's), "
                                 "seeds the method (R-SPAR's agent) and offsets the fine-tuning seed."])
        if key not in ts.sources:
            ts.source(key, **src)
        oneshot.add_rspar_goals(ts, all_rows, min_seeds=3)
        paths += ts.write(out + "_seeds")
    ours: dict[str, dict] = {}
    for r in first:
        if "refused" in r:
            continue
        if r["framework"] == "hobs_jax" and r.get("resolved_options") is not None:
            ours.setdefault(r["method"], r["resolved_options"])
    for m, o in sorted(ours.items()):
        t.note(f"options of `{m}` (resolved: the method's defaults plus the row's settings): "
               f"`{json.dumps(o, sort_keys=True)}`")
    tp: dict[str, list[str]] = {}
    for r in first:
        if "refused" in r:
            continue
        if r["framework"] == "torch-pruning" and "pruning_ratio" in r:
            tp.setdefault(r["method"], []).append(f"{r['model']} kept {r['target_macs_ratio']}: "
                                                  f"pruning_ratio {r['pruning_ratio']:.4f}")
    for m, v in sorted(tp.items()):
        t.note(f"Torch-Pruning's channel ratio found by bisection for `{m}`: " + "; ".join(v))
    for n in notes or []:
        t.note(n)
    have = {(r["model"], round(r["target_macs_ratio"], 6), r["method"]) for r in first}
    missing = [(m, tg, r) for m in models for tg in targets for r in rows if (m, round(tg, 6), r) not in have]
    for m, tg, r in missing:
        t.note(f"not run: {m} kept {tg}: `{r}`")
    paths += t.write(out)
    if t.rows:
        paths.append(plot_curves(t, out + "_curve.png"))
    print("wrote " + ", ".join(paths))
    return paths
