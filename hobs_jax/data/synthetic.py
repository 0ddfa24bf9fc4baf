"""Deterministic synthetic images for tests and smoke runs.

Each class has a random uint8 template; an example is its class template blended with
uniform noise (``signal`` sets the blend), so a small network can learn the labels and
loss curves in tests move. Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import numpy as np

from hobs_jax.data.preprocess import SmallImages
from hobs_jax.data.registry import DataSource, register


def make_arrays(n: int, image_shape: tuple[int, int, int], num_classes: int, seed: int,
                split_id: int, signal: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, *image_shape] and int32 labels [n] of split ``split_id``.

    The class templates depend on ``seed`` only, so all splits share them.
    """
    templates = np.random.default_rng([seed, 0]).integers(
        0, 256, size=(num_classes, *image_shape)).astype(np.float32)
    rng = np.random.default_rng([seed, 1 + split_id])
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    noise = rng.integers(0, 256, size=(n, *image_shape)).astype(np.float32)
    images = signal * templates[labels] + (1.0 - signal) * noise
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels


@register("synthetic")
def synthetic(image_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10,
              train_size: int = 1024, test_size: int = 256, seed: int = 0,
              signal: float = 0.6, augment: bool = False,
              resize_to: tuple[int, int] | None = None,
              channels: int | None = None) -> DataSource:
    """A learnable random dataset with splits 'train' and 'test'.

    Args:
      image_shape: (H, W, C) of the images.
      num_classes: label count.
      train_size, test_size: examples per split.
      seed: determines every byte.
      signal: weight of the class template vs noise, in [0, 1].
      augment, resize_to, channels: as for ``fashion_mnist``.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"synthetic image_shape={image_shape} must be (H, W, C) positive")
    if num_classes < 2:
        raise ValueError(f"synthetic num_classes={num_classes} must be >= 2")
    arrays = {"train": make_arrays(train_size, image_shape, num_classes, seed, 0, signal),
              "test": make_arrays(test_size, image_shape, num_classes, seed, 1, signal)}

    def reader(split, indices):
        images, labels = arrays[split]
        return images[indices], labels[indices]

    c = image_shape[2]
    pre = SmallImages(in_shape=image_shape, mean=(0.5,) * c, std=(0.25,) * c,
                      pad=4 if augment else 0, flip=augment,
                      resize_to=None if resize_to is None else (int(resize_to[0]), int(resize_to[1])),
                      channels=channels)
    return DataSource("synthetic", num_classes, {"train": train_size, "test": test_size},
                      reader, pre)
