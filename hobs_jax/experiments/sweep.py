"""Sweeps: models x variants (methods with options) x targets x seeds x fine-tuning budgets,
each row one run of the pipeline (:func:`hobs_jax.pipeline.run`) with a derived config in
its own workdir, so calibration, pruning with BN re-estimation, fine-tuning, evaluation and
benchmarking are the pipeline's own stages and nothing is implemented twice.

    sweep = Sweep("sens", models=("resnet20",), variants=("hobs", "hobs@damp=0.1"),
                  targets=(0.5,), seeds=(0,), budgets=(50, 200), workdir="runs/exp")
    rows = run_sweep(sweep)          # list of row records (dicts), cached per row

A *variant* is written ``METHOD[-ALLOCATION][@KEY=VALUE]...``: ``hobs-uniform``,
``hobs@propagate=0``, ``hobs@prune.bn_recalibrate=false@finetune.kd.enabled=true``; a key
without a dot is an option of the method (``prune.<method>.<key>``), a dotted key any
pipeline config key; values are JSON (``true``, ``0.1``) or plain strings.

Fine-tuning budgets: every row with budgets fine-tunes once, for the longest budget, and
is evaluated at every shorter one on the way (``finetune.eval_steps``): a curve along one
schedule, not separate shorter schedules.

Cache: a finished row is ``row.json`` in its workdir, named by a digest of its full
config, and is reused only while that digest holds (any changed default gives a new row);
an interrupted row resumes with the pipeline's own stage records and checkpoints.

Bad input: an unknown model, method, option, config key or target fails in one line
(``ValueError``) when the sweep is planned, before any row runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

log = logging.getLogger("hobs_jax.experiments")

__all__ = ["BASES", "Row", "Sweep", "Variant", "check_model", "model_of", "parse_variant", "plan", "run_sweep"]


def model_of(config: ml_collections.ConfigDict) -> str:
    """The model a pipeline config names: the zoo name or the import path of a module of
    one's own (:func:`hobs_jax.pipeline.config.model_label`)."""
    from hobs_jax.pipeline.config import model_label

    return model_label(config)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row kind: ``label`` (its name in tables), the registered ``method``, its
    ``options`` (``prune.<method>.*``) and other pipeline ``config`` keys (dotted)."""

    label: str
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    config: tuple[tuple[str, Any], ...] = ()


def parse_variant(text: str) -> Variant:
    """``METHOD[-ALLOCATION][@KEY=VALUE]...`` (module doc) -> :class:`Variant` (the method
    and keys are checked later, by :func:`plan`)."""
    head, *settings = text.strip().split("@")
    method, _, alloc = head.partition("-")
    if not method:
        raise ValueError(f"variant {text!r}: use METHOD[-ALLOCATION][@KEY=VALUE]...")
    options: list[tuple[str, Any]] = []
    config: list[tuple[str, Any]] = []
    if alloc:
        options.append(("allocation", alloc))
    for s in settings:
        key, eq, value = s.partition("=")
        if not eq or not key:
            raise ValueError(f"variant {text!r}: {s!r} is not KEY=VALUE")
        (config if "." in key else options).append((key, _value(value)))
    return Variant(text.strip(), method, tuple(options), tuple(config))


def fmnist_base(model: str) -> ml_collections.ConfigDict:
    """The rows' base config on Fashion-MNIST (unlocked): the trained checkpoint
    ``checkpoints/<model>_fmnist`` as the dense network, 2048 calibration images (seed, train
    split, no augmentation), one-shot accuracy before and after BN re-estimation, the
    pipeline's fine-tuning recipe (SGD momentum 0.9, lr 0.01 cosine, weight decay 5e-4,
    batch 128, augmentation, KD off), latency in XLA on one core (CPU time per call)."""
    from hobs_jax.methods import get_method, list_methods
    from hobs_jax.pipeline import base_config

    own = ":" in model  # a module of one's own by import path (pipeline's model.import_path)
    c = base_config("resnet20" if own else model)
    if own:
        c.model.import_path = model
    c.num_classes, c.in_channels = 10, 1
    c.init.kind, c.init.path = "checkpoint", f"checkpoints/{_slug(model.rpartition(':')[2] if own else model)}_fmnist"
    c.calibrate.num_images, c.calibrate.batch_size = 2048, 256
    c.prune.evaluate_oneshot = True
    for name in list_methods():
        if "progress" in get_method(name).default_config():
            c.prune[name].progress = False
    f = c.finetune
    f.progress, f.tensorboard, f.checkpoint.every_steps, f.checkpoint.async_save = False, False, 0, False
    f.eval_every = 10 ** 9  # evaluations only at the budgets (eval_steps) and the end
    c.train.progress, c.train.tensorboard = False, False
    b = c.benchmark
    b.runtimes, b.batch_sizes, b.threads, b.clock, b.rounds, b.iters = "xla", "1,64", 1, "cpu", 5, 20
    return c


BASES: dict[str, Callable[[str], ml_collections.ConfigDict]] = {"fmnist": fmnist_base}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The grid (module doc). ``overrides``: dotted config keys for every row;
    ``benchmark``: run the latency stage; ``base``: a name in :data:`BASES`."""

    name: str
    models: tuple[str, ...]
    variants: tuple[str | Variant, ...]
    targets: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    budgets: tuple[int, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    benchmark: bool = False
    base: str = "fmnist"
    workdir: str = "runs/experiments"


@dataclasses.dataclass(frozen=True)
class Row:
    """One planned run: its variant, coordinates, derived config and workdir."""

    model: str
    variant: Variant
    target: float
    seed: int
    budgets: tuple[int, ...]
    config: ml_collections.ConfigDict
    digest: str
    workdir: str

    @property
    def label(self) -> str:
        return self.variant.label


def _set(c: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    node = c
    *parents, leaf = key.split(".")
    try:
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = value
    except (KeyError, AttributeError):
        raise ValueError(f"{where}: unknown config key {key!r}") from None
    except TypeError as e:
        raise ValueError(f"{where}: {key}={value!r}: {str(e).splitlines()[0]}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


def derive(sweep: Sweep, model: str, variant: Variant, target: float, seed: int) -> ml_collections.ConfigDict:
    """The locked pipeline config of one row (validated)."""
    from hobs_jax.methods import get_method
    from hobs_jax.pipeline import validate

    if sweep.base not in BASES:
        raise ValueError(f"sweep {sweep.name!r}: unknown base {sweep.base!r}; use one of {sorted(BASES)}")
    where = f"sweep {sweep.name!r} variant {variant.label!r}"
    c = BASES[sweep.base](model)
    spec = get_method(variant.method)
    c.prune.method, c.prune.target = variant.method, float(target)
    c.seed = int(seed)
    c.finetune.seed = int(seed)
    stages = ["train", "calibrate", "prune", "evaluate"]
    if sweep.budgets:
        stages.insert(3, "finetune")
        c.finetune.steps, c.finetune.epochs = int(max(sweep.budgets)), 0.0
        c.finetune.eval_steps = ",".join(str(b) for b in sorted(sweep.budgets) if b < max(sweep.budgets))
    if sweep.benchmark:
        stages.append("benchmark")
    c.stages = ",".join(stages)
    for key, value in sweep.overrides:
        _set(c, key, value, f"sweep {sweep.name!r}")
    for key, value in variant.options:
        if key not in spec.default_config():
            raise ValueError(f"{where}: method {variant.method!r} has no option {key!r}")
        _set(c, f"prune.{variant.method}.{key}", value, where)
    for key, value in variant.config:
        _set(c, key, value, where)
    spec.options(c.prune[variant.method])  # typed check of every option value
    c.lock()
    validate(c)
    return c


def check_model(model: str, where: str = "sweep") -> str:
    """``model`` as a sweep names it: a zoo name, or the import path
    (``package.module:Class``) of a flax.linen or flax.nnx module of one's own, as a
    pipeline config's ``model.import_path`` names it; one-line ``ValueError`` otherwise."""
    from hobs_jax import models as zoo

    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}: model {model!r} is not a name")
    if ":" not in model:
        if model not in zoo.list_models():
            raise ValueError(f"{where}: model {model!r} is neither a zoo model ({', '.join(zoo.list_models())}) "
                             "nor an import path 'package.module:Class'")
        return "zoo"
    import flax.linen as nn
    from flax import nnx

    from hobs_jax.graph.spec import resolve

    try:
        cls = resolve(model)
    except ValueError as e:
        raise ValueError(f"{where}: model {model!r} is not a zoo model, and as an import path: {e}") from None
    if not issubclass(cls, (nn.Module, nnx.Module)):
        raise ValueError(f"{where}: model {model!r} names {cls.__name__}, not a flax.linen or flax.nnx module class")
    return "import_path"


def plan(sweep: Sweep) -> list[Row]:
    """Every row of ``sweep``, each config derived and validated: any bad model, method,
    option, key or target fails here in one line, before anything runs."""
    from hobs_jax.methods import get_method

    for name, values in (("models", sweep.models), ("variants", sweep.variants),
                         ("targets", sweep.targets), ("seeds", sweep.seeds)):
        if not values:
            raise ValueError(f"sweep {sweep.name!r}: {name} is empty")
    for m in sweep.models:
        check_model(m, f"sweep {sweep.name!r}")
    variants = [v if isinstance(v, Variant) else parse_variant(v) for v in sweep.variants]
    for v in variants:
        get_method(v.method)
    for t in sweep.targets:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise ValueError(f"sweep {sweep.name!r}: target {t!r} is not a kept fraction in (0, 1)")
    if any(not isinstance(b, int) or b < 1 for b in sweep.budgets):
        raise ValueError(f"sweep {sweep.name!r}: budgets {sweep.budgets!r} must be positive step counts")
    rows = []
    for model in sweep.models:
        for t in sweep.targets:
            for v in variants:
                for s in sweep.seeds:
                    c = derive(sweep, model, v, t, s)
                    digest = hashlib.sha256(c.to_json(sort_keys=True).encode()).hexdigest()[:12]
                    wd = os.path.join(sweep.workdir, _slug(model), f"t{t:g}", _slug(v.label), f"s{s}-{digest}")
                    rows.append(Row(model, v, float(t), int(s), tuple(sorted(sweep.budgets)), c, digest, wd))
    return rows


def _latency(summary: Mapping) -> dict:
    rows = summary.get("latency") or []
    if not rows:
        return {}
    first = rows[0]["runtime"]
    return {"latency_runtime": first, "latency_device": summary.get("latency_device"),
            "latency_clock": summary.get("latency_clock"),
            "latency_speedup": {f"batch{r['batch']}": r["speedup"] for r in rows if r["runtime"] == first},
            "latency": rows}


def record(row: Row, summary: Mapping, machine: Mapping, seconds: float) -> dict:
    """The row record a table reads: coordinates, accuracies, the curve, costs, latency,
    and where and with what it was measured."""
    from hobs_jax.train import read_metrics

    c = row.config
    curve = {}
    if row.budgets:
        evals = {e["step"]: e["top1"] for e in read_metrics(os.path.join(row.workdir, "finetune"), "eval")}
        curve = {str(b): evals.get(b) for b in row.budgets}
    defaults = dict(row.variant.options)
    return {
        "model": row.model, "label": row.label, "method": row.variant.method,
        "options": defaults, "config": dict(row.variant.config), "target": row.target,
        "metric": c.prune.metric, "seed": row.seed, "budgets": list(row.budgets),
        "macs_ratio": summary.get("macs_ratio"), "params_ratio": summary.get("params_ratio"),
        "macs_dense": summary.get("macs_dense"), "macs_pruned": summary.get("macs_pruned"),
        "params_dense": summary.get("params_dense"), "params_pruned": summary.get("params_pruned"),
        "acc_dense": summary.get("acc_dense"), "acc_oneshot": summary.get("acc_oneshot"),
        "acc_bn_recalibrated": summary.get("acc_bn_recalibrated"), "acc_pruned": summary.get("acc_pruned"),
        "acc_by_steps": curve, "acc_finetuned": curve.get(str(max(row.budgets))) if row.budgets else None,
        **_latency(summary),
        "dataset": c.data.source, "split": "test",
        "calibration": {"split": c.calibrate.split, "num_images": c.calibrate.num_images},
        "device": machine["device"], "machine": machine.get("summary"), "date": machine.get("date"),
        "commit": (machine.get("git") or {}).get("commit"), "stage_seconds": summary.get("stage_seconds"),
        "seconds": round(seconds, 1), "digest": row.digest, "workdir": row.workdir,
    }


def _read(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_row(row: Row, *, cached_only: bool = False) -> dict | None:
    """The row's record: from its cache, else from a pipeline run in its workdir (None
    with ``cached_only`` when it has not run)."""
    from hobs_jax.experiments import machine
    from hobs_jax.pipeline import run

    path = os.path.join(row.workdir, "row.json")
    rec = _read(path)
    if rec is not None and rec.get("digest") == row.digest:
        return rec
    if cached_only:
        return None
    t0 = time.time()
    log.info("row %s %s t=%g seed %d: running in %s", row.model, row.label, row.target, row.seed, row.workdir)
    m = machine.record()
    try:
        summary = run(row.config, row.workdir)
    except ValueError as e:  # the method refused the target, the model or the data: listed, not cached
        log.warning("row %s %s t=%g seed %d refused: %s", row.model, row.label, row.target, row.seed, e)
        return {"model": row.model, "label": row.label, "method": row.variant.method, "target": row.target,
                "seed": row.seed, "budgets": list(row.budgets), "dataset": row.config.data.source,
                "split": "test", "device": m["device"], "refused": str(e), "workdir": row.workdir}
    m["summary"] = machine.describe(m)
    rec = record(row, summary, m, time.time() - t0)
    os.makedirs(row.workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    return rec


def run_sweep(sweep: Sweep, *, cached_only: bool = False, rows: Sequence[Row] | None = None) -> list[dict]:
    """Plan (validating every row first), then run or reuse each row; returns the records
    of the rows that exist (all of them unless ``cached_only``)."""
    rows = plan(sweep) if rows is None else rows
    out = []
    for r in rows:
        rec = run_row(r, cached_only=cached_only)
        if rec is not None:
            out.append(rec)
    return out
