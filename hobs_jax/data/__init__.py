"""Data sources (one registry), preprocessing and host-sharded batch iterators.

    source = get_source('fashion_mnist')          # or 'synthetic', 'tfds:cifar10'
    train = TrainLoader(source, 'train', batch_size=128, seed=0)
    test = EvalLoader(source, 'test', batch_size=500)
"""

# Importing the modules registers their sources.
from hobs_jax.data import fashion_mnist as _fashion_mnist  # noqa: F401
from hobs_jax.data import synthetic as _synthetic  # noqa: F401
from hobs_jax.data import tfds_source as _tfds_source  # noqa: F401
from hobs_jax.data.pipeline import Batch, EvalLoader, LoaderPosition, TrainLoader, epoch_permutation, sample_indices
from hobs_jax.data.preprocess import (
    FASHION_MNIST_MEAN_STD,
    IMAGENET_MEAN_STD,
    ImageNetImages,
    SmallImages,
    bilinear_resize,
    pad_crop_flip,
    random_resized_box,
)
from hobs_jax.data.registry import SOURCES, DatasetError, DataSource, Preprocess, get_source, register

__all__ = [
    "SOURCES", "DataSource", "DatasetError", "Preprocess", "get_source", "register",
    "FASHION_MNIST_MEAN_STD", "IMAGENET_MEAN_STD", "ImageNetImages", "SmallImages",
    "bilinear_resize", "pad_crop_flip", "random_resized_box", "Batch", "EvalLoader",
    "LoaderPosition", "TrainLoader", "epoch_permutation", "sample_indices",
]
