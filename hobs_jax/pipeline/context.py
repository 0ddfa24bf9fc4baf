"""What the stages share: the config, the workdir, the data source and the models,
built lazily and once. The model is a zoo model (``model.name``) or a module of one's own
(``model.import_path`` + ``model.kwargs``, linen or NNX), the same for every stage: each
saved network is rebuilt from its variables through its Prunable."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
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
        self._evaluators: dict = {}  # network -> its Evaluator (see evaluate)

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

    @functools.cached_property
    def spec(self) -> dict | None:
        """The configured module of one's own as a spec (None for a zoo model)."""
        from hobs_jax.pipeline.config import model_spec

        return model_spec(self.config)

    @functools.cached_property
    def _nnx_module(self):
        """The configured NNX module, constructed for real (its own initializers, compiled
        once with ``nnx.jit`` instead of dispatched op by op)."""
        from flax import nnx

        from hobs_jax.graph.spec import resolve

        cls, kwargs, seed = resolve(self.spec["import_path"]), self.spec["kwargs"], self.config.seed
        return nnx.jit(lambda: cls(**kwargs, rngs=nnx.Rngs(seed)))()

    def dense_model(self):
        """What ``apply(variables, x, train=...)`` runs at the constructor's widths: the zoo
        model, or the adapter of the configured linen / NNX module."""
        c = self.config
        if self.spec is None:
            return models.build(c.model.name, num_classes=c.num_classes, in_channels=c.in_channels)
        return self.prunable(None).module

    def prunable(self, variables):
        """The configured network holding ``variables`` (any widths; None: a fresh NNX
        module's own, or the zoo's shapes), with its input shape."""
        from hobs_jax.graph.spec import build, prunable_from_spec

        c = self.config
        if self.spec is None:
            return models.prunable(c.model.name, variables, self.input_shape)
        if variables is None and self.spec["kind"] == "nnx":
            from hobs_jax.graph import as_prunable

            p = as_prunable(self._nnx_module, None, self.input_shape)
        elif variables is None:
            from hobs_jax.graph.linen_model import wrap

            adapter = wrap(build(self.spec))
            v = jax.eval_shape(lambda: models.init(adapter, jax.random.key(0), self.input_shape))
            p = prunable_from_spec(self.spec, v, self.input_shape)
        else:
            p = prunable_from_spec(self.spec, variables, self.input_shape)
        out = jax.eval_shape(lambda v, x: p.module.apply(v, x, train=False), p.variables,
                             jax.ShapeDtypeStruct(self.input_shape, jnp.float32))
        if tuple(out.shape[1:]) != (c.num_classes,):
            raise ValueError(f"model.import_path={self.spec['import_path']!r} gives outputs of shape "
                             f"{tuple(out.shape)}, but num_classes={c.num_classes}")
        return p

    def initial_variables_nnx(self) -> dict:
        """The variables of the configured NNX module as constructed (``nnx.Rngs(seed)``)."""
        return self.prunable(None).variables

    def train_loader(self, section: ml_collections.ConfigDict):
        from hobs_jax.data import TrainLoader

        return TrainLoader(self.source, "train", section.batch_size, seed=section.seed)

    def eval_loader(self, split: str = "test"):
        from hobs_jax.data import EvalLoader

        return EvalLoader(self.source, split, self.config.data.eval_batch_size)

    def evaluate(self, model, variables, desc: str = "eval") -> dict:
        """:func:`hobs_jax.train.evaluate` on the test split; a zoo network's result is
        shared with the other runs of this process (:mod:`hobs_jax.pipeline.eval_memo`)."""
        import json

        from hobs_jax.pipeline import eval_memo
        from hobs_jax.train import Evaluator, make_mesh

        def compute() -> dict:
            # One compiled step per network of this run: the prune stage evaluates the same
            # pruned network twice (right after pruning, after BN re-estimation).
            key = model if self.spec is None else id(model)
            if key not in self._evaluators:
                self._evaluators[key] = Evaluator(model.apply, make_mesh(),
                                                  fast_depthwise=self.config.train.fast_depthwise)
            return self._evaluators[key](variables, self.eval_loader(), desc=desc)

        if self.spec is not None:
            return compute()
        c = self.config  # everything self.source and self.eval_loader() are built from
        data = json.dumps({"data": c.data.to_dict(), "in_channels": c.in_channels, "num_classes": c.num_classes,
                           "split": "test"}, sort_keys=True)
        return eval_memo.evaluate(model, variables, data, compute)

    def model_dir(self, stage: str) -> str:
        import os

        return os.path.join(self.workdir.stage_dir(stage), "model")

    def load_model(self, stage: str):
        """(model, variables, meta) saved by ``stage`` (train, prune or finetune)."""
        from hobs_jax import export

        return export.load(self.model_dir(stage))

    def save_model(self, stage: str, model, variables: Mapping, plan=None) -> str:
        """Save ``stage``'s network (a zoo module or name, or the configured module of one's
        own at the widths of ``variables``) with its plan; replaces a leftover from an
        interrupted attempt (the stage record is written after this)."""
        path = self.model_dir(stage)
        self.export(path, model, jax.device_get(variables), plan)
        return path

    def export(self, path: str, model, variables: dict, plan=None) -> str:
        """``export.save`` of the network (see :meth:`save_model`)."""
        from hobs_jax import export

        if self.spec is None:
            return export.save(path, model, variables, plan=plan, overwrite=True)
        init_kwargs = self.spec["kwargs"] if self.spec["kind"] == "nnx" else None
        return export.save(path, self.prunable(variables), plan=plan, overwrite=True, init_kwargs=init_kwargs)
