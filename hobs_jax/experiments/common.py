"""What the experiment drivers of this branch share: the dense checkpoint, the
calibration images, the fine-tuning recipe as a train section, evaluation, and a
frozen-BatchNorm view of a model.

The calibration set is the pipeline's (``calibrate`` stage): ``num`` images of the
training split drawn with ``seed``, preprocessed without augmentation; the recipe is the
pipeline's ``finetune`` section with overrides.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hobs_jax.methods import Calibration


def source(name: str = "fashion_mnist"):
    from hobs_jax.data import get_source

    return get_source(name, augment=True)


def calibration(src, num: int, seed: int) -> Calibration:
    """``num`` training images drawn with ``seed`` (the pipeline's calibrate stage)."""
    n = src.size("train")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:min(num, n)])
    images, labels = src.batch("train", idx, train=False)
    return Calibration(np.asarray(images, np.float32), np.asarray(labels, np.int32))


def recipe(model: str, overrides: Mapping[str, Any] | None = None, *, steps: int, seed: int = 0):
    """The pipeline's ``finetune`` section for ``model`` with ``overrides`` (dotted keys
    for nested ones, e.g. ``kd.enabled``), ``steps`` long, without bars or TensorBoard."""
    from hobs_jax.pipeline import base_config

    c = base_config(model).finetune.copy_and_resolve_references()
    with c.unlocked():
        c.steps, c.epochs, c.seed = int(steps), 0.0, int(seed)
        c.progress, c.tensorboard = False, False
        c.checkpoint.every_steps, c.checkpoint.async_save = 0, False
        for key, value in dict(overrides or {}).items():
            node, *rest = key.split(".")
            if rest:
                if node not in c or rest[0] not in c[node]:
                    raise ValueError(f"recipe: unknown key {key!r}")
                c[node][rest[0]] = value
            else:
                if key not in c:
                    raise ValueError(f"recipe: unknown key {key!r}")
                c[key] = value
    return c


def accuracy(model, variables, src, batch: int = 500) -> float:
    from hobs_jax.data import EvalLoader
    from hobs_jax.train import evaluate

    return float(evaluate(model, variables, EvalLoader(src, "test", batch), desc="eval")["top1"])


def recalibrate(model, variables, calib: Calibration, batch: int = 256):
    from hobs_jax.stats import reestimate_bn

    return reestimate_bn(model, variables, (x for x, _ in calib.batches(batch)))


class FrozenBatchNorm:
    """``model`` whose training-mode forward is its inference forward: BatchNorm uses and
    keeps its running statistics (e.g. the ones re-estimated after pruning), dropout is
    off. ``fit`` only calls ``apply``, so this is a model for it."""

    def __init__(self, model):
        self.model = model

    def apply(self, variables, x, train: bool = False, mutable=False, rngs=None, **kwargs):
        out = self.model.apply(variables, x, train=False, **kwargs)
        if mutable:
            return out, {"batch_stats": variables.get("batch_stats", {})}
        return out


def host(tree):
    import jax

    return jax.tree.map(np.asarray, jax.device_get(tree))


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(tmp, path)


def parse_method_sets(items) -> dict[str, dict]:
    """``['METHOD.KEY=VALUE', ...]`` (a study's repeated ``--set``) -> {method: {key: value}},
    values read as JSON where they parse (``5``, ``true``, ``0.1``), else kept as text;
    one-line ``ValueError`` for a malformed item."""
    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, opt = key.partition(".")
        if not (eq and dot and method and opt):
            raise ValueError(f"--set {item!r}: use METHOD.KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[opt] = parsed
    return out
