"""What the stages share: the config, the workdir, the data source and the models,
built lazily and once."""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import ml_collections

from hobs_jax import models
from hobs_jax.pipeline.workdir import Workdir

log = logging.getLogger("hobs_jax.pipeline")


class Context:
    """Lazily built shared objects of one pipeline run."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Workdir):
        self.config = config
        self.workdir = workdir
        self.results: dict[str, dict] = {}  # stage -> outputs (finished or reused)

    @functools.cached_property
    def source(self):
        from hobs_jax.data import get_source

        d = self.config.data
        kw: dict[str, Any] = {}
        if d.source == "tfds":
            kw.update(dataset=d.tfds_dataset, data_dir=d.data_dir or None)
            if d.image_size:
                kw["image_size"] = d.image_size
        elif d.source == "fashion_mnist":
            if d.data_dir:
                kw["data_dir"] = d.data_dir
            if d.image_size and d.image_size != 28:
                kw.update(resize_to=(d.image_size, d.image_size))
            if self.config.in_channels != 1:
                kw["channels"] = self.config.in_channels
        elif d.source == "synthetic":
            size = d.image_size or 28
            n = d.synthetic_examples
            kw.update(image_shape=(size, size, self.config.in_channels),
                      num_classes=self.config.num_classes, train_size=n, test_size=max(8, n // 4))
        if d.source != "synthetic":
            kw["augment"] = d.augment
        src = get_source(d.source, **kw)
        if src.num_classes != self.config.num_classes:
            raise ValueError(f"num_classes={self.config.num_classes} but data source "
                             f"{d.source!r} has {src.num_classes} classes")
        if src.image_shape[-1] != self.config.in_channels:
            raise ValueError(f"in_channels={self.config.in_channels} but data source {d.source!r} "
                             f"gives {src.image_shape[-1]}-channel images")
        return src

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1,) + tuple(self.source.image_shape)

    def dense_model(self):
        c = self.config
        return models.build(c.model, num_classes=c.num_classes, in_channels=c.in_channels)

    def train_loader(self, section: ml_collections.ConfigDict):
        from hobs_jax.data import TrainLoader

        return TrainLoader(self.source, "train", section.batch_size, seed=section.seed)

    def eval_loader(self, split: str = "test"):
        from hobs_jax.data import EvalLoader

        return EvalLoader(self.source, split, self.config.data.eval_batch_size)

    def model_dir(self, stage: str) -> str:
        import os

        return os.path.join(self.workdir.stage_dir(stage), "model")

    def load_model(self, stage: str):
        """(model, variables, meta) saved by ``stage`` (train, prune or finetune)."""
        from hobs_jax import export

        return export.load(self.model_dir(stage))

    def save_model(self, stage: str, model, variables: dict, plan=None) -> str:
        """Save ``stage``'s network (a zoo module or name) with its plan; replaces a
        leftover from an interrupted attempt (the stage record is written after this)."""
        from hobs_jax import export

        path = self.model_dir(stage)
        export.save(path, model, jax.device_get(variables), plan=plan, overwrite=True)
        return path
