"""The setup validator: before a long run, check that a config will do what it says.

``python -m hobs_jax.validate --config=configs/X.py[:variant]`` runs :func:`check_config`;
each check prints one line (``PASS``/``FAIL``) and any failure makes the exit code 1:

- ``variants``: every variant of the config file ('' and 'smoke', or the file's
  ``VARIANTS``) loads, validates and builds its model;
- ``recipe``: the training recipe the config's docstring states (its ``Recipe:`` block,
  :func:`parse_recipe`) matches the config's values (epochs or steps, batch size, learning
  rate, warm-up fraction, optimizer, early stopping, ...);
- ``data``: the data source loads with the expected split sizes and, for Fashion-MNIST,
  every file's recorded size and sha256 (:data:`hobs_jax.data.fashion_mnist.FILES`);
- ``macs``: the MACs counter counts the model, and XLA's own count of the same ops equals
  its padding-free figure;
- ``latency``: the benchmark stage's runtimes time the model on this device (one short
  suite run, outputs verified against Flax);
- ``method``: the configured method is registered and accepts the model
  (:meth:`hobs_jax.methods.MethodSpec.check`).

``--compare A B`` runs :func:`compare_models`: two saved models (``hobs_jax.export``
directories) must have equal MACs and parameters within a tolerance, in total and per
layer; the per-layer table is printed.

The ``Recipe:`` block of a config docstring, one line per train section::

    Recipe (checked by python -m hobs_jax.validate):

        train: optimizer=sgd epochs=12 batch_size=128 lr=0.1 warmup_fraction=0.1 early_stopping=off
        finetune: optimizer=sgd epochs=1 batch_size=128 lr=0.01 warmup_fraction=0 early_stopping=off

``train: skipped`` states that the dense network is loaded, not trained. Keys: any key of
the train section (``kd`` as ``kd=on|off``, ``early_stopping`` as ``off`` or a patience).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

__all__ = ["Check", "check_config", "compare_models", "load_config_file", "parse_recipe"]


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except Exception as e:  # every check reports its failure in one line
        return Check(name, False, _one_line(e))


# -- config files --------------------------------------------------------------------------
def load_config_file(path: str):
    """The config module at ``path`` (a ``configs/*.py`` file)."""
    if not os.path.isfile(path):
        raise ValueError(f"no config file {path}")
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} cannot be imported as a Python module (a configs/*.py file?)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"{path} has no get_config(arg)")
    return mod


def variants_of(mod) -> tuple[str, ...]:
    return tuple(getattr(mod, "VARIANTS", ("", "smoke")))


_LINE = re.compile(r"^\s*(\w+):\s*(.*)$")


def parse_recipe(doc: str) -> dict[str, dict[str, str] | None]:
    """``{section: {key: value text}}`` from a docstring's ``Recipe`` block (module doc);
    ``None`` for a section stated as ``skipped``. ``ValueError`` when there is no block or
    a line is malformed."""
    lines = (doc or "").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("Recipe")), None)
    if start is None:
        raise ValueError("the config's docstring has no 'Recipe' block")
    out: dict[str, dict[str, str] | None] = {}
    for ln in lines[start + 1:]:
        if not ln.strip():
            if out:
                break
            continue
        m = _LINE.match(ln)
        if not m:
            raise ValueError(f"recipe line {ln.strip()!r}: use 'SECTION: KEY=VALUE ...'")
        section, rest = m[1], m[2].strip()
        if rest == "skipped":
            out[section] = None
            continue
        items = {}
        for tok in rest.split():
            k, eq, v = tok.partition("=")
            if not eq:
                raise ValueError(f"recipe {section}: {tok!r} is not KEY=VALUE")
            items[k] = v
        out[section] = items
    if not out:
        raise ValueError("the config's 'Recipe' block is empty")
    return out


def _same(value: Any, text: str) -> bool:
    if isinstance(value, bool):
        return text.lower() in (("true", "on", "yes") if value else ("false", "off", "no"))
    if isinstance(value, (int, float)):
        num, slash, den = text.partition("/")  # '350/3': a ratio stated exactly
        try:
            x = float(num) / float(den) if slash else float(text)
        except (ValueError, ZeroDivisionError):
            return False
        return math.isclose(float(value), x, rel_tol=1e-9, abs_tol=1e-12)
    return str(value) == text


def recipe_mismatches(config: ml_collections.ConfigDict, recipe: Mapping[str, Mapping[str, str] | None]) -> list[str]:
    """Every disagreement between a stated recipe and ``config``, one phrase each."""
    out = []
    for section, items in recipe.items():
        if section not in ("train", "finetune") or section not in config:
            out.append(f"recipe section {section!r} is not a train section of the config (train, finetune)")
            continue
        sec = config[section]
        if items is None:
            trained = section == "train" and (config.init.kind == "scratch" or config.init.train)
            if section == "finetune" or trained:
                out.append(f"recipe says {section} is skipped, but the config runs it")
            continue
        for key, text in items.items():
            if key == "early_stopping":
                value = sec.early_stopping.patience
                if not (_same(value, "0") if text == "off" else _same(value, text)):
                    out.append(f"{section}.early_stopping: recipe {text}, config patience {value}")
                continue
            if key == "kd":
                if not _same(sec.kd.enabled, text):
                    out.append(f"{section}.kd: recipe {text}, config {sec.kd.enabled}")
                continue
            if key not in sec or isinstance(sec[key], ml_collections.ConfigDict):
                out.append(f"{section}.{key}: not a key of the train section (misspelled?)")
                continue
            if not _same(sec[key], text):
                out.append(f"{section}.{key}: recipe {text}, config {sec[key]!r}")
    return out


# -- the checks ----------------------------------------------------------------------------
def _shape(config) -> tuple[int, int, int, int]:
    size = config.data.image_size or (224 if config.data.source == "tfds" else 28)
    return (1, size, size, config.in_channels)


def _dense(config, concrete: bool = False):
    """The config's dense network, its variables (abstract unless ``concrete``) and the
    input shape: a zoo module (no data read), or the Prunable of a module of one's own
    built by the pipeline's own Context (which reads the data source for its shape)."""
    import jax

    from hobs_jax import models
    from hobs_jax.pipeline.config import model_spec

    shape = _shape(config)
    if model_spec(config) is None:
        model = models.build(config.model.name, num_classes=config.num_classes, in_channels=config.in_channels)
        init = lambda: models.init(model, jax.random.key(config.seed), shape)  # noqa: E731
        return model, (init() if concrete else jax.eval_shape(init)), shape
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.workdir import Workdir

    with tempfile.TemporaryDirectory(prefix="hobs_validate_") as tmp:
        ctx = Context(config, Workdir(tmp))
        p = ctx.prunable(None)
        if concrete and any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(p.variables)):
            p = ctx.prunable(models.init(p.module, jax.random.key(config.seed), p.input_shape))
    return p, p.variables, tuple(p.input_shape)


def check_variants(mod, path: str) -> str:
    from hobs_jax import macs
    from hobs_jax.pipeline import validate
    from hobs_jax.pipeline.config import model_label

    done = []
    for v in variants_of(mod):
        try:
            c = mod.get_config(v or None)
            validate(c)
            model, variables, shape = _dense(c)
            done.append(f"{v or 'default'} ({model_label(c)}, {macs.count_params(variables):,} params)")
        except Exception as e:
            raise ValueError(f"variant {v or 'default'!r} of {path}: {_one_line(e)}") from None
    return ", ".join(done) + " build"


def check_recipe(mod, config) -> str:
    recipe = parse_recipe(mod.__doc__ or "")
    bad = recipe_mismatches(config, recipe)
    if bad:
        raise ValueError("; ".join(bad))
    return "docstring recipe matches: " + "; ".join(
        f"{s} " + ("skipped" if i is None else " ".join(f"{k}={v}" for k, v in i.items())) for s, i in recipe.items())


def expected_sizes(config) -> dict[str, int] | None:
    d = config.data
    if d.source == "fashion_mnist":
        return {"train": 60000, "test": 10000}
    if d.source == "synthetic":
        return {"train": d.synthetic_examples, "test": max(8, d.synthetic_examples // 4)}
    if d.source == "tfds" and d.tfds_dataset == "imagenet2012":
        return {"train": 1281167, "validation": 50000}
    return None


def check_data(config) -> str:
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.workdir import Workdir

    with tempfile.TemporaryDirectory(prefix="hobs_validate_") as tmp:
        src = Context(config, Workdir(tmp)).source  # the pipeline's own source construction
        want = expected_sizes(config) or {}
        got = {s: src.size(s) for s in want}
    bad = {s: (got[s], n) for s, n in want.items() if got[s] != n}
    if bad:
        raise ValueError("split sizes " + ", ".join(f"{s} {g} (expected {n})" for s, (g, n) in bad.items()))
    extra = ""
    if config.data.source == "fashion_mnist":
        from hobs_jax.data import fashion_mnist as fm

        root = config.data.data_dir or fm.DEFAULT_DIR
        for name in fm.FILES:
            fm.read_verified(os.path.join(root, name))
        extra = f"; {len(fm.FILES)} files match their recorded size and sha256"
    sizes = ", ".join(f"{s} {n:,}" for s, n in got.items()) or "sizes not recorded for this source"
    return f"{config.data.source} loads: {sizes}{extra}"


def check_macs(config) -> str:
    from hobs_jax import macs, models
    from hobs_jax.pipeline.config import model_label

    model, variables, shape = _dense(config)
    rep = macs.count(model, variables, shape)
    if rep.macs <= 0 or not rep.layers:
        raise ValueError(f"the counter found no MACs in {model_label(config)}")
    module = model.module if isinstance(model, models.Prunable) else model
    xla = macs.xla_op_flops(module, variables, shape) / 2
    if xla != rep.valid_macs:
        raise ValueError(f"XLA counts {xla:,.0f} MACs over the counted ops, the counter {rep.valid_macs:,} "
                         f"without padding taps")
    return (f"{model_label(config)} at {'x'.join(map(str, shape[1:]))}: {rep.macs:,} MACs ({len(rep.layers)} layers), "
            f"{rep.params:,} params; XLA's count of the same ops agrees ({xla:,.0f} padding-free)")


def check_latency(config) -> str:
    from hobs_jax.bench import ModelSpec
    from hobs_jax.pipeline.benchmark_stage import runtimes_of
    from hobs_jax.pipeline.config import model_spec
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.workdir import Workdir

    names = runtimes_of(config)
    with tempfile.TemporaryDirectory(prefix="hobs_validate_bench_") as tmp:
        if model_spec(config) is None:
            spec = ModelSpec.from_zoo(config.model.name, label="dense", num_classes=config.num_classes,
                                      input_shape=_shape(config)[1:])
        else:  # a module of one's own: saved as the pipeline saves it, timed from the file
            model, variables, shape = _dense(config, concrete=True)
            path = Context(config, Workdir(tmp)).export(os.path.join(tmp, "dense"), model.module, variables)
            spec = ModelSpec.from_saved(path, label="dense", input_shape=tuple(shape[1:]))
        result = _time(config, names, spec, tmp)
    bad = [f"{r['runtime']}: {r['reason'] or r['status']}" for r in result.rows if r["status"] != "ok"]
    if bad or not result.rows:
        raise ValueError("; ".join(bad) or "no row timed")
    return "timed " + ", ".join(f"{r['runtime']} ({r['device']}) {r['p50_ms']:.3f} ms" for r in result.rows)


def _time(config, names, spec, tmp: str):
    from hobs_jax.bench import Options, run_suite

    b = config.benchmark
    opts = Options(batch_sizes=(1,), warmup=1, iters=3, rounds=1, threads=b.threads, clock=b.clock,
                   devices=("cpu",) if b.clock == "cpu" else None)
    return run_suite([spec], names, opts, out_dir=os.path.join(tmp, "bench"))


def check_method(config) -> str:
    import numpy as np

    from hobs_jax.methods import Calibration, get_method, make_task
    from hobs_jax.pipeline.config import model_label

    p = config.prune
    spec = get_method(p.method)
    model, variables, shape = _dense(config, concrete=True)  # the checks read shapes and collections only
    calib = Calibration(np.zeros((2,) + tuple(shape[1:]), np.float32), np.zeros((2,), np.int32))
    from hobs_jax.pipeline.benchmark_stage import runtimes_of

    # A latency budget's table is measured when the prune stage runs; acceptance is checked on MACs.
    metric = "macs" if p.metric == "latency" else p.metric
    task = make_task(p.method, model, variables, target=p.target, metric=metric, align=p.align,
                     runtimes=runtimes_of(config)[:1], input_shape=shape, calib=calib, options=p[p.method],
                     seed=config.seed)
    spec.check(task)
    return f"{p.method} is registered and accepts {model_label(config)} (target {p.target} of the {p.metric})"


def check_config(path: str, variant: str = "", overrides: Sequence[tuple[str, Any]] = (),
                 checks: Sequence[str] = ("variants", "recipe", "data", "macs", "latency", "method"),
                 config: ml_collections.ConfigDict | None = None) -> list[Check]:
    """Every check on the config file ``path`` (``variant`` for the data, MACs, latency and
    method checks; the recipe is the default variant's). ``config``: an already loaded
    (overridden) config of that variant."""
    mod = load_config_file(path)
    cfg = config if config is not None else mod.get_config(variant or None)
    base = mod.get_config(None)
    fns = {"variants": lambda: check_variants(mod, path), "recipe": lambda: check_recipe(mod, base),
           "data": lambda: check_data(cfg), "macs": lambda: check_macs(cfg),
           "latency": lambda: check_latency(cfg), "method": lambda: check_method(cfg)}
    unknown = [c for c in checks if c not in fns]
    if unknown:
        raise ValueError(f"unknown check {unknown[0]!r}; checks: {', '.join(fns)}")
    return [_run(c, fns[c]) for c in checks]


# -- iso-budget between saved models -------------------------------------------------------
def _per_layer(model, variables, shape) -> tuple[dict[str, int], dict[str, int], Any]:
    from hobs_jax import macs

    rep = macs.count(model, variables, shape)
    by_macs: dict[str, int] = {}
    for layer in rep.layers:
        by_macs[layer.path] = by_macs.get(layer.path, 0) + layer.macs
    params: dict[str, int] = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, prefix + (str(k),))
            else:
                key = "/".join(prefix)
                params[key] = params.get(key, 0) + int(math.prod(getattr(v, "shape", ())))

    walk(variables["params"], ())
    return by_macs, params, rep


def compare_models(a: str, b: str, *, tol: float = 0.01, per_layer: bool = True,
                   input_shape: tuple[int, ...] | None = None) -> tuple[list[Check], str]:
    """Checks that the saved models at ``a`` and ``b`` have equal MACs and params within the
    relative ``tol``, in total and (``per_layer``) per layer; returns the checks and the
    per-layer table (Markdown)."""
    import jax

    from hobs_jax import export, models

    loaded = [export.load(p) for p in (a, b)]
    names = [m["model"] for _, _, m in loaded]
    if names[0] != names[1]:
        raise ValueError(f"{a} holds a {names[0]!r}, {b} a {names[1]!r}: per-layer MACs compare one architecture")
    meta = loaded[0][2]
    shape = input_shape or (meta["input_shape"] if meta.get("input_shape")  # a network outside the zoo
                            else models.input_shape(names[0], 1, in_channels=meta["in_channels"]))
    shape = (1,) + tuple(shape[-3:])
    (ma, pa, ra), (mb, pb, rb) = [_per_layer(m, jax.device_get(v), shape) for m, v, _ in loaded]

    def rel(x, y):
        return abs(x - y) / max(abs(x), abs(y), 1)

    rows, bad_layers = [], []
    for key in sorted(set(ma) | set(mb) | set(pa) | set(pb)):
        x, y, p, q = ma.get(key, 0), mb.get(key, 0), pa.get(key, 0), pb.get(key, 0)
        off = max(rel(x, y), rel(p, q))
        rows.append(f"| {key} | {x:,} | {y:,} | {rel(x, y):.2%} | {p:,} | {q:,} | {rel(p, q):.2%} |"
                    + (" **off**" if off > tol else ""))
        if off > tol:
            bad_layers.append(key)
    table = "\n".join(["| layer | MACs A | MACs B | diff | params A | params B | diff |",
                       "|---|---:|---:|---:|---:|---:|---:|", *rows,
                       f"| total | {ra.macs:,} | {rb.macs:,} | {rel(ra.macs, rb.macs):.2%} | {ra.params:,} | "
                       f"{rb.params:,} | {rel(ra.params, rb.params):.2%} |"])
    checks = [Check("total MACs", rel(ra.macs, rb.macs) <= tol,
                    f"{ra.macs:,} vs {rb.macs:,} ({rel(ra.macs, rb.macs):.2%}, tolerance {tol:.2%})"),
              Check("total params", rel(ra.params, rb.params) <= tol,
                    f"{ra.params:,} vs {rb.params:,} ({rel(ra.params, rb.params):.2%}, tolerance {tol:.2%})")]
    if per_layer:
        checks.append(Check("per-layer MACs and params", not bad_layers,
                            f"{len(rows) - len(bad_layers)}/{len(rows)} layers within {tol:.2%}"
                            + (f"; off: {', '.join(bad_layers[:6])}" + (" ..." if len(bad_layers) > 6 else "")
                               if bad_layers else "")))
    return checks, table
