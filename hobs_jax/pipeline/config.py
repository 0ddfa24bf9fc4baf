"""The pipeline's config: one ``ml_collections.ConfigDict`` for every stage.

``configs/<name>.py`` files start from :func:`base_config`, set what differs, and return
it locked (a misspelled override then fails). :func:`validate` checks values before any
compute and raises a one-line ``ValueError`` naming the key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import ml_collections

from hobs_jax.train.config import get_train_config, validate_train_config

STAGES = ("train", "calibrate", "prune", "finetune", "evaluate", "benchmark", "export")
INIT_KINDS = ("scratch", "checkpoint", "torch")
METRICS = ("macs", "params", "latency")

# The config sections each stage's result depends on (cumulative along the pipeline):
# a finished stage is reused only while these are unchanged.
STAGE_SECTIONS = {
    "train": ("model", "num_classes", "in_channels", "data", "init", "train", "seed"),
    "calibrate": ("calibrate",),
    "prune": ("prune",),
    "finetune": ("finetune",),
    "evaluate": (),
    "benchmark": ("benchmark",),
    "export": ("export",),
}


def stage_sections(stage: str) -> tuple[str, ...]:
    """Every section ``stage`` depends on, its upstream stages' included."""
    out: list[str] = []
    for s in STAGES:
        out.extend(STAGE_SECTIONS[s])
        if s == stage:
            return tuple(out)
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def base_config(model: str = "resnet20") -> ml_collections.ConfigDict:
    """Defaults for every section (unlocked; configs override, then ``lock()``).

    Sections:
      model: ``name`` (a zoo model), or ``import_path`` (``package.module:Class``, a
        flax.linen or flax.nnx module of your own; it replaces ``name`` when set) with
        ``kwargs`` (a JSON object of its constructor arguments, e.g. ``'{"width": 32}'``).
      num_classes, in_channels: the zoo model's head/input, and the data's (a module of
        your own must produce ``num_classes`` logits).
      data: source ('fashion_mnist' | 'synthetic' | 'tfds'), tfds_dataset, data_dir,
        image_size (0 = the source's own), augment, eval_batch_size, synthetic_examples
        (training examples of the synthetic source; its test split has a quarter).
      init: kind 'scratch' | 'checkpoint' (a hobs_jax export directory) | 'torch' (a torch
        state_dict file, converted by the parity layer); path; train: also train a loaded
        network (a scratch one is always trained).
      train: the training engine's section (hobs_jax.train.get_train_config); epochs 0
        skips training (for init.kind != 'scratch').
      calibrate: num_images, batch_size, split for activation statistics.
      prune: method (registry name), target (kept fraction of the metric, in (0, 1)),
        metric ('macs', 'params', or 'latency': a per-layer latency table measured in
        ``prune.latency.runtime`` at ``prune.latency.batch``, cached per model, widths,
        runtime and device), align (the width quantum every allocator allocates multiples
        of: 'auto' = the quantum of the first benchmark runtime on this device (XLA: 8 on
        AVX-512), halved while the target is unreachable at it; 'off' = none; or a number
        such as '16'),
        bn_recalibrate (re-estimate BN statistics on the calibration data after pruning),
        evaluate_oneshot (test accuracy right after pruning), latency (runtime: '' = the
        first benchmark runtime; batch: 0 = the largest benchmark batch size; table: a
        table file, '' = the cached one, measured when missing; points, rounds, iters:
        the measurement's grid and timing; measure: 0 = trust the table, N = close the
        latency target by measurement, at most N allocations, each pruned network timed
        against dense in the table's runtime and batch until within measure_tol of the
        target, hobs_jax.methods.measured), and one sub-section per registered method
        (its options).
      finetune: a train section for fine-tuning the pruned model (epochs 0 skips it).
      benchmark: dense vs pruned latency with hobs_jax.bench: runtimes (comma-separated
        names; "" = xla,onnxruntime on a CPU, xla and tensorrt (when installed) on a GPU),
        batch_sizes, warmup (untimed calls), iters (timed calls per configuration), rounds
        (interleaved rounds), threads (CPU threads per framework, 0 = all cores), clock
        ('wall', or 'cpu' with threads=1: per-call CPU time, robust on a shared machine).
      export: torch (state_dict next to the orbax checkpoint), onnx.
      stages: comma-separated subset of train,calibrate,prune,finetune,evaluate,
        benchmark,export, run in that order.
    """
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name=model, import_path="", kwargs="{}"))
    c.num_classes = 10
    c.in_channels = 1
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(source="fashion_mnist", tfds_dataset="", data_dir="",
                                            image_size=0, augment=True, eval_batch_size=500,
                                            synthetic_examples=1024))
    c.init = ml_collections.ConfigDict(dict(kind="scratch", path="", train=False))
    c.train = get_train_config()
    c.calibrate = ml_collections.ConfigDict(dict(num_images=2048, batch_size=256, split="train"))
    from hobs_jax.allocation import feedback
    from hobs_jax.methods import config_sections

    c.prune = ml_collections.ConfigDict(dict(method="magnitude", target=0.5, metric="macs",
                                             align="auto", bn_recalibrate=True,
                                             evaluate_oneshot=True))
    c.prune.latency = ml_collections.ConfigDict(dict(runtime="", batch=0, table="", points=4, rounds=3,
                                                     iters=5, measure=0, measure_tol=feedback.TOLERANCE))
    for name, section in config_sections().items():
        c.prune[name] = section
    c.finetune = get_train_config()
    c.finetune.epochs = 1.0
    c.finetune.lr = 0.01
    c.finetune.warmup_fraction = 0.0
    c.benchmark = ml_collections.ConfigDict(dict(runtimes="", batch_sizes="1,64", warmup=3, iters=20,
                                                 rounds=5, threads=0, clock="wall"))
    c.export = ml_collections.ConfigDict(dict(torch=True, onnx=False))
    c.stages = ",".join(STAGES)
    return c


def imagenet_config(model: str, *, epochs: float, batch_size: int, lr_per_256: float,
                    weight_decay: float, optimizer: str = "sgd") -> ml_collections.ConfigDict:
    """ImageNet-1k (tensorflow-datasets ``imagenet2012`` under ``TFDS_DATA_DIR``) at 224x224:
    the shared part of the ImageNet configs (unlocked)."""
    c = base_config(model)
    c.num_classes, c.in_channels = 1000, 3
    c.data.source, c.data.tfds_dataset, c.data.image_size = "tfds", "imagenet2012", 224
    c.data.eval_batch_size = 1000
    c.calibrate.num_images, c.calibrate.batch_size, c.calibrate.split = 256, 32, "train"
    for t, ep in ((c.train, epochs), (c.finetune, epochs / 3)):
        t.optimizer, t.epochs, t.batch_size = optimizer, float(ep), batch_size
        t.lr = lr_per_256 * batch_size / 256
        t.weight_decay, t.label_smoothing = weight_decay, 0.1
        t.nesterov = optimizer == "sgd"
        t.mixed_precision = "auto"
        t.checkpoint.every_steps = 2000
    c.finetune.lr = c.train.lr / 10
    c.finetune.kd.enabled = True
    c.prune.method, c.prune.target = "hobs", 0.5
    c.benchmark.batch_sizes = "1,32,256"
    return c


def imagenet_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrink an ImageNet config to seconds-to-minutes on a CPU: synthetic 224x224 images
    (no dataset needed), a few steps, tiny calibration and benchmark."""
    c.data.source, c.data.eval_batch_size, c.data.synthetic_examples = "synthetic", 8, 32
    for t in (c.train, c.finetune):
        t.steps, t.epochs, t.batch_size, t.checkpoint.every_steps = 2, 0.0, 8, 1
        t.mixed_precision = "off"
    c.calibrate.num_images, c.calibrate.batch_size = 16, 8
    c.benchmark.batch_sizes, c.benchmark.iters, c.benchmark.warmup, c.benchmark.rounds = "1,8", 2, 1, 2


def stages_of(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    names = tuple(s.strip() for s in c.stages.split(",") if s.strip())
    for s in names:
        if s not in STAGES:
            raise ValueError(f"stages: unknown stage {s!r}; use a subset of {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def model_spec(c: ml_collections.ConfigDict) -> dict | None:
    """The spec (:mod:`hobs_jax.graph.spec`) of the configured module of one's own, or
    None for a zoo model; one-line errors for a bad import path or kwargs."""
    import json

    m = c.model
    if not m.import_path:
        return None
    from hobs_jax.graph.spec import resolve

    cls = resolve(m.import_path)
    try:
        kwargs = json.loads(m.kwargs or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"model.kwargs={m.kwargs!r} is not a JSON object ({e})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"model.kwargs={m.kwargs!r}: must be a JSON object of constructor arguments")
    import flax.linen as nn
    from flax import nnx

    if issubclass(cls, nn.Module):
        kind = "linen"
    elif issubclass(cls, nnx.Module):
        kind = "nnx"
    else:
        raise ValueError(f"model.import_path={m.import_path!r} is not a flax.linen or flax.nnx module class")
    return {"kind": kind, "import_path": m.import_path, "kwargs": kwargs, "call_kwargs": {}}


def model_label(c: ml_collections.ConfigDict) -> str:
    """The configured model's name in reports: the zoo name or the import path."""
    return c.model.import_path or c.model.name


def fingerprint_view(full: dict) -> dict:
    """The config as stage fingerprints see it (``json.loads(config.to_json())``): a zoo
    model is fingerprinted as ``model: NAME``, as before ``model`` was a section, so
    workdirs made earlier resume; a module of one's own by its import path and kwargs."""
    m = full.get("model")
    if isinstance(m, dict):
        full = dict(full)
        full["model"] = m["name"] if not m.get("import_path") else {
            "import_path": m["import_path"], "kwargs": m.get("kwargs", "{}")}
    return full


def validate(c: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """One-line ``ValueError`` for the first invalid value (before any compute)."""
    from hobs_jax import models

    if model_spec(c) is None:
        models.get_entry(c.model.name)
    for key in ("num_classes", "in_channels"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ValueError(f"{key}={c[key]!r}: must be a positive int")
    if c.init.kind not in INIT_KINDS:
        raise ValueError(f"init.kind={c.init.kind!r}: use one of {INIT_KINDS}")
    if c.init.kind != "scratch" and not c.init.path:
        raise ValueError(f"init.path is empty but init.kind={c.init.kind!r} needs it")
    stages = stages_of(c)
    if "train" in stages:
        validate_train_config(c.train, num_devices=num_devices)
    if "finetune" in stages:
        ft = c.finetune
        if ft.ast.enabled and ft.ast.score == "reducible" and not ft.ast.reference:
            ft = copy.deepcopy(ft)  # the finetune stage computes them from the dense network
            ft.ast.reference = "<the dense network's losses>"
        try:
            validate_train_config(ft, num_devices=num_devices)
        except ValueError as e:
            raise ValueError(str(e).replace("train.", "finetune.", 1)) from None
    p = c.prune
    from hobs_jax.methods import get_method

    get_method(p.method)
    if not isinstance(p.target, (int, float)) or not 0 < p.target < 1:
        raise ValueError(f"prune.target={p.target!r}: the kept fraction must be in (0, 1)")
    if p.metric not in METRICS:
        raise ValueError(f"prune.metric={p.metric!r}: use one of {METRICS}")
    from hobs_jax.allocation.alignment import parse_align

    try:
        parse_align(p.align)
    except ValueError as e:
        raise ValueError(f"prune.{e}") from None
    lat = p.latency
    if lat.runtime and lat.runtime not in ("xla", "onnxruntime"):
        raise ValueError(f"prune.latency.runtime={lat.runtime!r}: latency tables are measured in xla or onnxruntime")
    if lat.batch < 0 or lat.points < 2 or lat.rounds < 1 or lat.iters < 1:
        raise ValueError(f"prune.latency: batch={lat.batch} (>= 0), points={lat.points} (>= 2), "
                         f"rounds={lat.rounds} (>= 1), iters={lat.iters} (>= 1)")
    if lat.measure < 0 or not 0 < lat.measure_tol < 1:
        raise ValueError(f"prune.latency: measure={lat.measure} (>= 0 allocations) and measure_tol="
                         f"{lat.measure_tol} (in (0, 1))")
    if lat.measure and p.metric != "latency":
        raise ValueError(f"prune.latency.measure={lat.measure} closes a latency target by measurement; "
                         f"prune.metric is {p.metric!r} (set prune.metric=latency)")
    if c.calibrate.num_images < 1 or c.calibrate.batch_size < 1:
        raise ValueError(f"calibrate.num_images/batch_size={c.calibrate.num_images}/"
                         f"{c.calibrate.batch_size}: must be >= 1")
    sizes = batch_sizes(c)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"benchmark.batch_sizes={c.benchmark.batch_sizes!r}: positive ints, comma-separated")
    if c.benchmark.iters < 1 or c.benchmark.warmup < 0:
        raise ValueError(f"benchmark.iters/warmup={c.benchmark.iters}/{c.benchmark.warmup}: iters >= 1, warmup >= 0")
    if c.benchmark.rounds < 1 or c.benchmark.threads < 0:
        raise ValueError(f"benchmark.rounds/threads={c.benchmark.rounds}/{c.benchmark.threads}: rounds >= 1, "
                         "threads >= 0")
    if c.benchmark.clock not in ("wall", "cpu") or (c.benchmark.clock == "cpu" and c.benchmark.threads != 1):
        raise ValueError(f"benchmark.clock={c.benchmark.clock!r}: 'wall', or 'cpu' with benchmark.threads=1")
    if "benchmark" in stages:
        from hobs_jax.pipeline.benchmark_stage import runtimes_of

        runtimes_of(c)
    if c.data.eval_batch_size < 1 or (num_devices and c.data.eval_batch_size % num_devices):
        raise ValueError(f"data.eval_batch_size={c.data.eval_batch_size}: must be a positive "
                         f"multiple of the device count {num_devices or 1}")


def batch_sizes(c: ml_collections.ConfigDict) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in str(c.benchmark.batch_sizes).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"benchmark.batch_sizes={c.benchmark.batch_sizes!r}: positive ints, "
                         "comma-separated") from None


def with_variant(c: ml_collections.ConfigDict, arg: str | None,
                 smoke: Callable[[ml_collections.ConfigDict], None]) -> ml_collections.ConfigDict:
    """The tail of every ``configs/*.py``: apply the ``:smoke`` variant (``smoke(c)``) when
    asked, refuse any other variant in one line, lock the config (a misspelled override
    then fails) and return it."""
    if arg == "smoke":
        smoke(c)
    elif arg not in (None, ""):
        raise ValueError(f"unknown config variant {arg!r}; use ':smoke' or nothing")
    c.lock()
    return c


def fmnist_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrink a Fashion-MNIST config to seconds: a few steps per stage, tiny calibration."""
    c.train.epochs, c.train.steps, c.train.checkpoint.every_steps = 0.0, 8, 4
    c.calibrate.num_images, c.calibrate.batch_size = 64, 32
    c.finetune.steps = 4
    c.benchmark.batch_sizes, c.benchmark.iters, c.benchmark.rounds = "1,8", 3, 3


def fmnist_config(model: str, epochs: float) -> ml_collections.ConfigDict:
    """The Fashion-MNIST recipe of ``configs/resnet{20,56}_fmnist.py`` (unlocked): SGD
    Nesterov lr 0.1, weight decay 5e-4, batch 128, ``epochs`` of cosine; H-OBS to half the
    MACs."""
    c = base_config(model)
    c.num_classes, c.in_channels = 10, 1
    t = c.train
    t.optimizer, t.lr, t.momentum, t.nesterov = "sgd", 0.1, 0.9, True
    t.weight_decay, t.batch_size, t.epochs = 5e-4, 128, float(epochs)
    t.checkpoint.every_steps = 500
    c.prune.method, c.prune.target = "hobs", 0.5
    return c
