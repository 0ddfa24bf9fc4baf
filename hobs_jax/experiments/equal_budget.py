"""Table 1 rows at equal training budgets (issue #20, points 2 and 3): every method,
post-training or training-time, gets the same total training after the dense checkpoint.

The budget is ``budget_epochs`` of Fashion-MNIST (468 steps of batch 128 per epoch)
counted from the dense checkpoint every row starts from (its 30 epochs of pretraining are
common to every row, so they cancel). A post-training method (magnitude, DepGraph, UDFC,
H-OBS, R-SPAR) spends all of it fine-tuning the pruned network; a training-time method
(JTP, BilevelPruning, StructAlign) spends part of it inside the method (its rounds of
weight training, through the same recipe) and fine-tunes for the rest:

    finetune_steps = budget_epochs * 468 - method_training_steps     (refused if < 0)

DepGraph's sparse-learning steps count against its budget the same way. A
``tp-CRITERION-local|global`` method is Torch-Pruning's own pruner (the peer's code on
the torch-converted network, :mod:`~hobs_jax.experiments.studies.oneshot_tp`), fine-tuned
like every post-training row. One row is one
(model, method, target, seed): prune (BN re-estimated on the calibration images: the
one-shot point), fine-tune with one recipe for every row, evaluate on the test set at
50 and 200 steps, one epoch and the end of the budget (``acc_final``). Records carry the
keys of ``docs/results/oneshot_fmnist.json`` plus ``seed``, ``budget_epochs``,
``acc_final``, ``method_training_steps``, ``finetune_steps`` and the measured wall time of
each part (``seconds``). The summary (:func:`summarize`) refuses rows of one table with
different budgets and fewer than 3 seeds per row (it reports a std).

    python -m hobs_jax.experiments.equal_budget --model resnet56 --targets 0.5,0.333 \\
        --methods hobs,jtp,bilevel,structalign,magnitude,depgraph,udfc,rspar,tp-groupnorm-local \\
        --seeds 0,1,2 \\
        --set jtp.round_steps=23 --set bilevel.round_steps=23 --set structalign.round_steps=23 \\
        --recipe kd+lr1e-3+warmup --budget-epochs 1 --workdir runs/table1 --out docs/results/table1_resnet56

``--set METHOD.KEY=VALUE`` sets a method option for its rows (recorded in each row; a
cached row made with other options is refused, and so is one made with another
``--recipe``: a workdir holds one recipe's rows). The training-time methods' defaults
(10 rounds of 47 steps) fill a whole epoch by themselves, so at a 1-epoch budget they run
10 rounds of 23 steps and fine-tune the other 238; a method whose own training exceeds the
budget is refused before any compute. ``--restore RECORD`` seeds the row cache from a
published record (more seeds or methods later, without recomputing).

The run record (command, device, rows, summary) goes to ``OUT's folder/records/NAME.json``
and the table, built from it through :class:`~hobs_jax.experiments.table.ResultTable`
(iso-MACs enforced), to ``OUT.{json,md,tex}``; ``--render-only`` rebuilds the table from
the record without computing.

Latency (``--latency xla,onnxruntime``, the default): every row saves its final network,
and after the rows are made the dense checkpoint and all of them are timed in one
interleaved run of the benchmark suite (:func:`hobs_jax.bench.run_suite`: batch 1 and 64,
one thread, CPU time per call); each row gets ``latency_speedup`` = dense p50 / its p50
per runtime and batch. The timing is of this table's run (all rows against one dense
timing), so it is redone on every run that asks for it and not kept in the row cache.
Rows restored into a fresh checkout have no network on disk: they keep the speedups of
the run that timed them, and the page lists them in a note.

Resuming: a row stopped by SIGTERM (the method's own training or the fine-tuning) is not
written; the same command resumes it from its checkpoints, and its fine-tuning curve and
wall times are read back from the runs' ``metrics.jsonl`` (:func:`hobs_jax.train.eval_curve`,
:func:`hobs_jax.train.fit_seconds`), so the evaluations and seconds of the earlier call
count.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hobs_jax.experiments import common
from hobs_jax.experiments.budget_cache import restore, row_path
from hobs_jax.experiments.row_latency import LATENCY_BATCHES, LATENCY_COLUMNS, carried_note, latency_mean, time_rows

STEPS_PER_EPOCH = 468  # Fashion-MNIST: 60,000 // 128


def budget_steps(budget_epochs: float) -> int:
    """Total training steps after the dense checkpoint for ``budget_epochs``."""
    if not budget_epochs > 0:
        raise ValueError(f"budget_epochs={budget_epochs!r}: must be > 0")
    return int(round(float(budget_epochs) * STEPS_PER_EPOCH))


def finetune_steps(budget_epochs: float, method_steps: int, method: str = "method") -> int:
    """Fine-tuning steps left to a row whose method trained ``method_steps`` inside itself
    (one-line ``ValueError`` when the method alone exceeds the budget)."""
    total = budget_steps(budget_epochs)
    if method_steps > total:
        raise ValueError(f"{method}: its own training ({method_steps} steps) exceeds the budget of "
                         f"{budget_epochs:g} epochs ({total} steps); raise --budget-epochs or shrink its rounds")
    return total - int(method_steps)


class TrainingCallback:
    """``task.finetune`` for the methods: the recipe (``common.recipe``) for ``steps``
    steps on the training split, each call its own data seed and workdir (what the
    pipeline's prune stage does), steps and seconds counted. A recipe with distillation
    distils from the dense checkpoint (``dense_vars``) here too: every step of the budget
    is trained the same way."""

    def __init__(self, model_name: str, model, src, overrides: Mapping, *, seed: int, workdir: str,
                 dense_vars: Mapping | None = None):
        self.model_name, self.model, self.src = model_name, model, src
        self.dense_vars = dense_vars
        self.overrides, self.seed, self.workdir = dict(overrides), seed, workdir
        self.calls, self.steps, self.seconds, self.rounds = itertools.count(), 0, 0.0, 0

    def __call__(self, variables, steps, extra_loss=None, extra_transform=None):
        from hobs_jax import faults
        from hobs_jax.data import TrainLoader
        from hobs_jax.train import Teacher, fit

        n = next(self.calls)
        self.rounds = n + 1
        c = common.recipe(self.model_name, self.overrides, steps=int(steps), seed=self.seed + 1000 + n)
        if c.kd.enabled and self.dense_vars is None:
            raise ValueError("the recipe distils (kd.enabled) but the method's training callback has no dense "
                             "variables to distil from")
        teacher = Teacher(self.model.apply, self.dense_vars) if c.kd.enabled else None
        t0 = time.time()
        out = fit(self.model, dict(variables), TrainLoader(self.src, "train", c.batch_size, seed=c.seed), c,
                  os.path.join(self.workdir, f"method_training_{n}"), extra_loss=extra_loss,
                  extra_transform=extra_transform, teacher=teacher,
                  callbacks=[faults.step_callback("method_training")]).completed()
        self.steps += int(steps)
        self.seconds += time.time() - t0
        return common.host(out.variables)


def is_torch_pruning(method: str) -> bool:
    """``tp-CRITERION-local|global``: Torch-Pruning's own pruner, not a registered method."""
    return method.startswith("tp-")


@dataclasses.dataclass
class Cut:
    """One row's pruned network before fine-tuning, whichever framework cut it."""

    model: Any
    variables: dict
    macs_ratio: float
    params_ratio: float
    framework: str
    plan: Any = None
    info: dict = dataclasses.field(default_factory=dict)


def prune_row(args, method: str, target: float, seed: int, dense, dvars, calib, cb) -> Cut:
    """The cut of one row: a registered method through :func:`hobs_jax.methods.prune`
    (its own training, if any, through ``cb``), or Torch-Pruning's pruner
    (``tp-CRITERION-local|global``: the peer's own code on the torch-converted network,
    bisected to the MACs target by our counter; :mod:`~hobs_jax.experiments.studies.oneshot_tp`)."""
    if not is_torch_pruning(method):
        from hobs_jax.methods import prune

        r = prune(method, args.model, dvars, target=target, calib=calib, seed=seed, finetune=cb,
                  options=row_options(args, method) or None)
        return Cut(r.model, dict(r.variables), r.macs_ratio, r.params_ratio, "hobs_jax", r.outcome.plan,
                   dict(r.outcome.info))
    from hobs_jax import macs
    from hobs_jax.experiments.studies import oneshot_fmnist, oneshot_tp

    spec = oneshot_fmnist.parse_row(method)
    shape = (1, *calib.images.shape[1:])
    model, variables, info = oneshot_tp.prune_in_subprocess(
        args.model, common.host(dvars), target, spec["kind"], spec["global"], shape, calib.images, calib.labels,
        oneshot_fmnist.TOL)
    before, after = macs.count(dense, dvars, shape), macs.count(model, variables, shape)
    return Cut(model, dict(variables), after.macs / before.macs, after.params / before.params, "torch-pruning",
               info=info)


def run_row(args, method: str, target: float, seed: int, src, calib, dense, dvars, acc_dense: float) -> dict:
    """One (method, target, seed) row (module doc)."""
    from hobs_jax import export, faults
    from hobs_jax.data import EvalLoader, TrainLoader
    from hobs_jax.train import Teacher, eval_curve, fit, fit_seconds

    overrides = common_overrides(args)
    row_dir = os.path.join(args.workdir, args.model, f"{method}_{target:g}_s{seed}")
    cb = TrainingCallback(args.model, dense, src, overrides, seed=seed, workdir=row_dir, dense_vars=dvars)
    t0 = time.time()
    cut = prune_row(args, method, target, seed, dense, dvars, calib, cb)
    prune_s = time.time() - t0
    msteps = cb.steps  # every step the method trained the unpruned network, whatever the method
    left = finetune_steps(args.budget_epochs, msteps, method)
    t1 = time.time()
    variables = common.recalibrate(cut.model, cut.variables, calib)
    rec = {"model": args.model, "method": method, "framework": cut.framework, "target_macs_ratio": target,
           "macs_ratio": cut.macs_ratio, "params_ratio": cut.params_ratio, "acc_dense": acc_dense,
           "acc_oneshot": common.accuracy(cut.model, cut.variables, src),
           "acc_bn_recalibrated": common.accuracy(cut.model, variables, src),
           "seed": seed, "budget_epochs": float(args.budget_epochs), "method_training_steps": msteps,
           "finetune_steps": left, "latency_speedup": None,
           "options": dict(getattr(args, "options", {}).get(method, {}))}
    if method in ("bilevel",):
        rec["dynamic"] = cut.info.get("bilevel_dynamic")
    if cut.framework == "torch-pruning":
        rec["torch_pruning"] = cut.info
    evals: dict[int, float] = {}
    ft_dir = os.path.join(row_dir, "finetune")
    if left > 0:
        c = common.recipe(args.model, overrides, steps=left, seed=seed)
        with c.unlocked():
            c.eval_steps = ",".join(str(s) for s in (50, 200, STEPS_PER_EPOCH) if s < left)
            c.eval_every = left
        teacher = Teacher(dense.apply, dvars) if c.kd.enabled else None
        variables = fit(cut.model, variables, TrainLoader(src, "train", c.batch_size, seed=c.seed), c, ft_dir,
                        eval_data=EvalLoader(src, "test", 500), teacher=teacher,
                        callbacks=[faults.step_callback("finetune")]).completed().variables
        evals = {k: v for k, v in eval_curve(ft_dir).items() if k <= left}  # earlier calls' points too
    # The final network, for the benchmark suite's latency columns (python -m hobs_jax.bench).
    rec["model_dir"] = export.save(os.path.join(row_dir, "model"), cut.model, common.host(variables),
                                   plan=cut.plan, overwrite=True)
    rec["acc_by_steps"] = {str(k): evals[k] for k in sorted(evals)}
    rec["acc_finetuned"] = evals.get(left) if left > 0 else rec["acc_bn_recalibrated"]
    rec["acc_final"] = rec["acc_finetuned"]
    # Across resumes: the method's training and the fine-tuning as every call of them ran
    # (metrics.jsonl); the rest of pruning as this call ran it.
    method_s = sum(fit_seconds(os.path.join(row_dir, f"method_training_{n}")) for n in range(cb.rounds))
    rec["seconds"] = {"prune": round(prune_s - cb.seconds + method_s, 1), "method_training": round(method_s, 1),
                      "finetune": round(fit_seconds(ft_dir) if left > 0 else time.time() - t1, 1)}
    return rec


def row_seconds(rec: Mapping) -> float:
    """A row's wall seconds: pruning (which includes the method's own training,
    ``seconds['method_training']``, shown apart) plus fine-tuning."""
    s = rec["seconds"]
    return float(s.get("prune", 0.0) + s.get("finetune", 0.0))


def row_options(args, method: str) -> dict:
    """The options a row runs ``method`` with: its smoke options under ``--smoke``, then
    the ``--set`` values for it."""
    from hobs_jax.methods import get_method

    if is_torch_pruning(method):
        return {}
    out = dict(get_method(method).smoke_config()) if args.smoke else {}
    out.update(getattr(args, "options", {}).get(method, {}))
    return out


def planned_steps(method: str, options: Mapping) -> int:
    """How many steps ``method`` will train the unpruned network inside itself with
    ``options`` (over its defaults): ``rounds x round_steps`` for the training-time methods,
    ``sparse_steps`` for DepGraph, 0 for the others (checked against the budget before any
    compute; the row records what was actually trained)."""
    from hobs_jax.methods import get_method

    if is_torch_pruning(method):
        return 0
    o = dict(get_method(method).default_config())
    o.update(options)
    if "rounds" in o and "round_steps" in o:
        return int(o["rounds"]) * int(o["round_steps"])
    return int(o.get("sparse_steps", 0))


def common_overrides(args) -> dict:
    from hobs_jax.experiments.recovery import parse_recipe

    return parse_recipe(args.recipe) if args.recipe else {}


def row_recipe(rec: Mapping) -> dict:
    """The fine-tuning overrides a cached row was made with: its ``recipe`` field, or for
    rows cached before that field existed, the ``--recipe`` of the command that made it."""
    from hobs_jax.experiments.recovery import parse_recipe

    if "recipe" in rec:
        return dict(rec["recipe"])
    words = shlex.split(str(rec.get("command", "")))
    for i, w in enumerate(words):
        if w == "--recipe" and i + 1 < len(words):
            return parse_recipe(words[i + 1]) if words[i + 1] else {}
        if w.startswith("--recipe="):
            text = w.split("=", 1)[1]
            return parse_recipe(text) if text else {}
    return {}


def summarize(rows: Sequence[Mapping], *, min_seeds: int = 3) -> list[dict]:
    """Mean and std per (model, method, target) of ``acc_final`` and the one-shot point;
    refuses (one line) rows with different budgets and rows with fewer than
    ``min_seeds`` seeds."""
    budgets = sorted({float(r["budget_epochs"]) for r in rows})
    if len(budgets) > 1:
        raise ValueError(f"rows of one table have different budgets {budgets} (epochs): every row must get the "
                         f"same training")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], float(r["target_macs_ratio"])), []).append(r)
    out = []
    for (model, method, target), rs in sorted(groups.items()):
        seeds = sorted({int(r["seed"]) for r in rs})
        if len(seeds) < min_seeds:
            raise ValueError(f"{method} at {target:g}: {len(seeds)} seed(s) {seeds}; a table with std needs at least "
                             f"{min_seeds}")
        final = np.array([r["acc_final"] for r in rs], np.float64)
        one = np.array([r["acc_bn_recalibrated"] for r in rs], np.float64)
        cut = np.array([r.get("acc_oneshot", np.nan) for r in rs], np.float64)
        std = (lambda a: float(a.std(ddof=1))) if len(rs) > 1 else (lambda a: float("nan"))
        # The fine-tuning curve: steps every seed of the row evaluated (50, 200, one epoch).
        steps = sorted(set.intersection(*(set(r.get("acc_by_steps", {})) for r in rs)), key=int)
        curve = {k: {"mean": float(np.mean([r["acc_by_steps"][k] for r in rs])),
                     "std": std(np.array([r["acc_by_steps"][k] for r in rs], np.float64))} for k in steps}
        out.append({"model": model, "method": method, "target": target, "seeds": seeds,
                    "budget_epochs": budgets[0], "acc_dense": float(rs[0]["acc_dense"]),
                    "acc_oneshot_mean": float(cut.mean()),
                    "acc_bn_recalibrated_mean": float(one.mean()), "acc_bn_recalibrated_std": std(one),
                    "acc_final_mean": float(final.mean()), "acc_final_std": std(final), "curve": curve,
                    "macs_ratio": float(np.mean([r["macs_ratio"] for r in rs])),
                    "params_ratio": float(np.mean([r["params_ratio"] for r in rs])),
                    "method_training_steps": int(rs[0]["method_training_steps"]),
                    "seconds_mean": float(np.mean([row_seconds(r) for r in rs])),
                    "latency_speedup": latency_mean(rs)})
    return out


def write_report(out: str, command: str, rows: list[dict], summary: list[dict], min_seeds: int,
                 notes: Sequence[str] = (), title: str = "") -> list[str]:
    """Save the run record (``OUT's folder/records/NAME.json``: command, device, the rows,
    their summary, ``notes`` and ``title``, the page's heading when not Table 1's) and write
    the table built from it through ResultTable (``OUT.{json,md,tex}``)."""
    from hobs_jax.bench import sysinfo
    from hobs_jax.experiments import studies

    raw = {"command": command, "device": sysinfo.describe(sysinfo.machine()), "rows": rows, "summary": summary,
           "min_seeds": min_seeds, "notes": list(notes)}
    if title:
        raw["title"] = title
    return studies.publish_record(sys.modules[__name__], out, raw)


NAME = "table1_equal_budget"


def from_legacy(doc: dict) -> tuple[list[dict], dict]:
    """The summary rows (mean and std over seeds; no std for one seed) of the run record
    :func:`write_report` writes."""
    key = "equal_budget"
    rows = []
    for s in doc["summary"]:
        n = len(s["seeds"])

        def ms(mean, sd, n=n):
            return {"mean": mean, "std": sd if n > 1 else None, "n": n}
        curve = s.get("curve", {})
        cut = s.get("acc_oneshot_mean")
        rows.append(dict(s, n_seeds=n, dataset="fashion_mnist", split="test", device=doc["device"], source=key,
                         min_seeds=doc.get("min_seeds"),
                         cut_ms=None if cut is None or cut != cut else ms(cut, None),
                         oneshot_ms=ms(s["acc_bn_recalibrated_mean"], s["acc_bn_recalibrated_std"]),
                         at50_ms=ms(curve["50"]["mean"], curve["50"]["std"]) if "50" in curve else None,
                         at200_ms=ms(curve["200"]["mean"], curve["200"]["std"]) if "200" in curve else None,
                         final_ms=ms(s["acc_final_mean"], s["acc_final_std"]),
                         final_minus_dense=s["acc_final_mean"] - s["acc_dense"],
                         **{f"speedup_{rt}_b{b}": (s.get("latency_speedup") or {}).get(f"{rt}@{b}")
                            for rt, _ in LATENCY_COLUMNS for b in LATENCY_BATCHES}))
    info = {"command": doc["command"], "notes": doc.get("notes", [])}
    if doc.get("title"):
        info["title"] = doc["title"]
    return rows, {key: info}


GOALS = {0.5: 0.002, 0.333: 0.006}  # issue 20: H-OBS at the full budget within 0.2 / 0.6 points of dense


def goals(t) -> None:
    """Issue 20's goals on the rows of ``t``: H-OBS (or H-OBS with R-SPAR) has the best mean
    final accuracy at each target; its curve never drops below its one-shot point; at the
    full budget it is within 0.2 (2x) / 0.6 (3x) points of dense."""
    for target in sorted({float(r["target"]) for r in t.rows}, reverse=True):
        here = [r for r in t.rows if float(r["target"]) == target]
        ours = [r for r in here if r["method"] in ("hobs", "rspar")]
        if not ours:
            continue
        best = max(here, key=lambda r: r["acc_final_mean"])
        t.goal(f"{target:g} of the MACs: H-OBS or R-SPAR has the best mean final top-1",
               best["method"] in ("hobs", "rspar"),
               f"best {best['method']} {100 * best['acc_final_mean']:.2f}% of {len(here)} methods")
        for r in ours:
            points = [r["acc_bn_recalibrated_mean"]] + [v["mean"] for v in r.get("curve", {}).values()] + [
                r["acc_final_mean"]]
            t.goal(f"{target:g}, {r['method']}: the fine-tuning curve never drops below the one-shot point",
                   min(points[1:]) >= points[0],
                   " -> ".join(f"{100 * v:.2f}" for v in points))
            tol = GOALS.get(round(target, 3))
            if tol is not None:
                gap = r["acc_dense"] - r["acc_final_mean"]
                t.goal(f"{target:g}, {r['method']}: final within {100 * tol:.1f} points of dense", gap <= tol,
                       f"{100 * r['acc_final_mean']:.2f}% vs dense {100 * r['acc_dense']:.2f}%")


def table(rows, sources, name: str = NAME):
    """Table 1 rows at one equal training budget: mean ± std over seeds; the iso-MACs rule
    of :class:`ResultTable` refuses a row more than 1% off its target."""
    from hobs_jax.experiments.table import Column, ResultTable

    budget = rows[0]["budget_epochs"] if rows else None
    n_min = min((int(r["n_seeds"]) for r in rows), default=0)
    n_max = max((int(r["n_seeds"]) for r in rows), default=0)
    titles = [info["title"] for info in sources.values() if info.get("title")]
    t = ResultTable(name, (titles[0] if titles else "Table 1: every method at equal training budgets") + (
        f" ({budget:g} epoch{'s' if budget != 1 else ''} after the dense checkpoint)" if budget is not None else ""),
                    [Column("model", "model"), Column("method", "method"), Column("target", "target"),
                     Column("n_seeds", "seeds", "int"), Column("macs_ratio", "MACs kept", "ratio", 4),
                     Column("params_ratio", "params kept", "ratio", 4),
                     Column("method_training_steps", "method's own steps", "int"),
                     Column("acc_dense", "dense", "pct"),
                     Column("cut_ms", "right after pruning", "pm"),
                     Column("oneshot_ms", "one-shot (BN re-est.)", "pm"),
                     Column("at50_ms", "+50", "pm"), Column("at200_ms", "+200", "pm"),
                     Column("final_ms", "final", "pm", best="max"),
                     Column("final_minus_dense", "final - dense", "points"),
                     Column("seconds_mean", "wall s", "float", 0)] + [
                        Column(f"speedup_{rt}_b{b}", f"{short} b{b}", "speedup")
                        for rt, short in LATENCY_COLUMNS for b in LATENCY_BATCHES],
                    description=[(f"Mean and std over {n_min}+ seeds" if n_min > 1 else
                                  "One seed per row (no std)" if n_max <= 1 else
                                  f"Mean and std over the seeds column's seeds ({n_max} at most; one seed: "
                                  "no std)") + "; accuracies in %; +50 / +200: the fine-tuning "
                                 "curve after that many of its steps; final: after the whole budget; wall seconds "
                                 "per row (prune incl. the method's own training + fine-tuning) measured on that "
                                 "device; XLA / ORT b1, b64: dense p50 / the row's p50 in XLA and ONNX Runtime at "
                                 "batch 1 and 64, one thread, CPU time, dense and every row timed in one "
                                 "interleaved run of the benchmark suite (mean over seeds)."])
    t.extend(rows)
    t.add_sources({k: {f: v for f, v in info.items() if f not in ("notes", "title")} for k, info in sources.items()})
    for info in sources.values():
        for n in info.get("notes", []):
            t.note(n)
    goals(t)
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--checkpoint", default=None, help="dense export dir (default checkpoints/MODEL_fmnist)")
    p.add_argument("--methods", default="magnitude,depgraph,udfc,jtp,bilevel,structalign,hobs,rspar")
    p.add_argument("--targets", default="0.5,0.333")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget-epochs", type=float, default=1.0)
    p.add_argument("--recipe", default="", help="fine-tuning recipe for every row (recovery's names or key=value)")
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--min-seeds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="each method's smoke options (tests, not results)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option for its rows, e.g. jtp.rounds=5 (JSON value; recorded in each row)")
    p.add_argument("--workdir", default="runs/table1")
    p.add_argument("--out", required=True)
    p.add_argument("--latency", default="xla,onnxruntime",
                   help="runtimes to time dense and every row's network in, interleaved, batch 1 and 64 "
                        "('' skips timing)")
    p.add_argument("--latency-rounds", type=int, default=4)
    p.add_argument("--latency-iters", type=int, default=24)
    p.add_argument("--cached-only", action="store_true",
                   help="tabulate the grid's rows already in the row cache (and time them) without computing "
                        "the missing ones, which a note lists")
    p.add_argument("--render-only", action="store_true", help="rebuild OUT's table from its stored run record")
    p.add_argument("--note", action="append", default=[], help="a note for the table (repeatable; kept in the record)")
    p.add_argument("--title", default="", help="the page's heading (default: Table 1's; kept in the record)")
    p.add_argument("--restore", metavar="RECORD", default="",
                   help="first write the rows of a published run record (docs/results/records/NAME.json) into "
                        "the workdir's row cache where missing, so new seeds or methods join a published table "
                        "without recomputing it")
    args = p.parse_args(argv)
    if args.render_only:
        from hobs_jax.experiments import studies

        print(studies.render_prefix(sys.modules[__name__], args.out))
        return
    import hobs_jax
    from hobs_jax.experiments.studies import oneshot_fmnist
    from hobs_jax.methods import get_method

    args.checkpoint = args.checkpoint or os.path.join("checkpoints", f"{args.model}_fmnist")
    command = "python -m hobs_jax.experiments.equal_budget " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    methods = [m for m in args.methods.split(",") if m]
    try:
        args.options = common.parse_method_sets(args.set)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for m in methods:  # an unknown name fails before any compute
        try:
            oneshot_fmnist.parse_row(m) if is_torch_pruning(m) else get_method(m)
        except ValueError as e:
            raise SystemExit(f"--methods: {e}") from None
    for m, opts in args.options.items():
        if m not in methods:
            raise SystemExit(f"--set {m}.*: {m!r} is not one of --methods")
        if is_torch_pruning(m):
            raise SystemExit(f"--set {m}.*: Torch-Pruning rows take no options")
        unknown = sorted(set(opts) - set(get_method(m).default_config()))
        if unknown:
            raise SystemExit(f"--set {m}.{unknown[0]}: {m} has no option {unknown[0]!r}")
    targets = [float(t) for t in args.targets.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if len(seeds) < args.min_seeds:
        raise SystemExit(f"--seeds {args.seeds}: {len(seeds)} seed(s); the table reports a std over at least "
                         f"--min-seeds={args.min_seeds}")
    budget_steps(args.budget_epochs)
    try:  # an unknown or missing runtime fails before any compute
        from hobs_jax.bench.runtimes import get_runtime, parse_list

        runtimes = parse_list(args.latency, "runtime")
        for rt in runtimes:
            get_runtime(rt).check_installed()
    except ValueError as e:
        raise SystemExit(f"--latency {args.latency}: {e}") from None
    for m in methods:  # a method whose own training alone exceeds the budget fails before any compute
        try:
            finetune_steps(args.budget_epochs, planned_steps(m, row_options(args, m)), m)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    recipe = common_overrides(args)
    for method, target, seed in itertools.product(methods, targets, seeds):  # cached rows: the same options
        path = row_path(args.workdir, args.model, method, target, seed, args.budget_epochs)
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            made = cached.get("options", {})
            if made != args.options.get(method, {}):
                raise SystemExit(f"{path}: made with {method} options {made}, asked {args.options.get(method, {})}; "
                                 "use another --workdir or the same --set")
            if row_recipe(cached) != recipe:
                raise SystemExit(f"{path}: made with the fine-tuning recipe {row_recipe(cached)}, asked {recipe}; "
                                 "use another --workdir or the same --recipe")
    src = common.source()
    start: tuple | None = None  # calibration images, dense network, its accuracy: loaded for the first row made
    if args.restore:
        print(f"restored {restore(args.restore, args.workdir)} rows from {args.restore}")
    rows, missing = [], []
    for method, target, seed in itertools.product(methods, targets, seeds):
        path = row_path(args.workdir, args.model, method, target, seed, args.budget_epochs)
        if os.path.exists(path):
            rows.append(json.load(open(path)))
            continue
        if args.cached_only:
            missing.append(f"{method} at {target:g} seed {seed}")
            continue
        if start is None:
            dense, dvars, _ = hobs_jax.load(args.checkpoint)
            start = (common.calibration(src, args.calib_images, 0), dense, dvars, common.accuracy(dense, dvars, src))
        rec = run_row(args, method, target, seed, src, *start)
        rec["command"], rec["recipe"] = command, recipe
        common.write_json(path, rec)
        print(f"{method} {target:g} seed {seed}: final {rec['acc_final']} ({row_seconds(rec):.0f} s)",
              flush=True)
        rows.append(rec)
    rows = [dict(r) for r in rows]  # the timing belongs to this run's record, not to the row cache
    n = time_rows(rows, args.checkpoint, runtimes, os.path.join(args.workdir, "latency"),
                  input_shape=src.image_shape, rounds=args.latency_rounds, iters=args.latency_iters)
    if runtimes:
        print(f"timed dense and {n} of {len(rows)} rows in {', '.join(runtimes)}", flush=True)
    notes = list(args.note)
    carried = carried_note(rows)  # restored rows whose networks this workdir lacks keep their earlier timing
    if carried:
        notes.append(carried)
    if missing:  # a partial grid says which of its rows it lacks
        notes.append(f"Rows of this command's grid not made yet ({len(missing)}): {', '.join(missing)}.")
        print(notes[-1], flush=True)
    if not rows:
        raise SystemExit("--cached-only: none of the grid's rows is in the row cache of --workdir")
    summary = summarize(rows, min_seeds=args.min_seeds)
    write_report(args.out, command, rows, summary, args.min_seeds, notes, args.title)


if __name__ == "__main__":
    from hobs_jax import cli

    cli.run_job(main)
