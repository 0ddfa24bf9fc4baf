"""One registry of data sources, found by name.

A data source is a factory ``f(**kw) -> DataSource`` registered with :func:`register`;
configs name it (``data.name = 'fashion_mnist'``) and :func:`get_source` builds it.
``'tfds:cifar10'`` is shorthand for ``get_source('tfds', dataset='cifar10')``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or misconfigured (the message says how to fix it)."""


class Preprocess(Protocol):
    """Turns raw examples into model inputs.

    ``noise`` holds ``noise_dim`` uniform [0, 1) numbers per example, drawn by the
    pipeline for the whole *global* batch and sliced per host, so augmentation does not
    depend on how many hosts share the batch.
    """

    @property
    def noise_dim(self) -> int: ...

    @property
    def out_shape(self) -> tuple[int, int, int]: ...

    def __call__(self, images: Any, *, train: bool, noise: np.ndarray | None) -> np.ndarray:
        ...


class DataSource:
    """A labelled image dataset with random access and its preprocessing.

    Attributes:
      name: registry name (for logs).
      num_classes: number of labels.
      image_shape: (H, W, C) of the preprocessed float32 images the model sees.
      split_sizes: examples per split, e.g. ``{'train': 60000, 'test': 10000}``.
    """

    def __init__(self, name: str, num_classes: int, split_sizes: Mapping[str, int],
                 reader: Callable[[str, np.ndarray], tuple[Any, np.ndarray]],
                 preprocess: Preprocess):
        self.name = name
        self.num_classes = int(num_classes)
        self.split_sizes = dict(split_sizes)
        self._reader = reader
        self.preprocess = preprocess

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.preprocess.out_shape
        return (int(h), int(w), int(c))

    def size(self, split: str) -> int:
        """Number of examples in ``split``; unknown split -> one-line KeyError."""
        if split not in self.split_sizes:
            raise KeyError(f"data source {self.name!r} has no split {split!r}; "
                           f"available: {sorted(self.split_sizes)}")
        return self.split_sizes[split]

    def read(self, split: str, indices: np.ndarray) -> tuple[Any, np.ndarray]:
        """Raw examples (uint8 images [n,H,W,C] or a list of them) and int32 labels [n]."""
        self.size(split)
        return self._reader(split, np.asarray(indices, dtype=np.int64))

    def batch(self, split: str, indices: np.ndarray, *, train: bool,
              noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 images [n, *image_shape] and int32 labels [n]."""
        raw, labels = self.read(split, indices)
        images = self.preprocess(raw, train=train, noise=noise)
        return images, np.asarray(labels, dtype=np.int32)

    def __repr__(self) -> str:
        return (f"DataSource({self.name!r}, num_classes={self.num_classes}, "
                f"image_shape={self.image_shape}, splits={self.split_sizes})")


SOURCES: dict[str, Callable[..., DataSource]] = {}


def register(name: str) -> Callable[[Callable[..., DataSource]], Callable[..., DataSource]]:
    """Decorator: ``@register('fashion_mnist') def f(**kw) -> DataSource``."""

    def wrap(factory: Callable[..., DataSource]) -> Callable[..., DataSource]:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} is already registered")
        SOURCES[name] = factory
        return factory

    return wrap


def get_source(name: str, **kw: Any) -> DataSource:
    """Builds the data source registered as ``name`` (``'tfds:NAME'`` selects a tfds set)."""
    if name.startswith("tfds:"):
        name, kw = "tfds", {**kw, "dataset": name[len("tfds:"):]}
    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; registered: {sorted(SOURCES)}")
    return SOURCES[name](**kw)
