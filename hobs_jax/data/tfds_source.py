"""Any tensorflow-datasets image classification set, through ``tfds.data_source``.

Random access (ArrayRecord) needs no TensorFlow: tfds decodes records with numpy/PIL.
Datasets are never downloaded at run time: they must already be prepared in the
ArrayRecord format under ``TFDS_DATA_DIR`` (or ``data_dir``), e.g. on a machine that has
the data: ``TFDS_DATA_DIR=/data/tfds tfds build cifar10 --file_format=array_record``
(ImageNet needs its tarballs in ``$TFDS_DATA_DIR/downloads/manual`` first).

Fixed-size sets of at most 64 pixels (cifar10, cifar100, mnist, ...) use the
:class:`SmallImages` recipe (pad-crop + flip); others (imagenet2012, ...) use
:class:`ImageNetImages` (random-resized-crop / resize + center crop, ImageNet mean/std).
"""

from __future__ import annotations

import os
from concurrent import futures

import numpy as np

from hobs_jax.data.preprocess import FASHION_MNIST_MEAN_STD, IMAGENET_MEAN_STD, ImageNetImages, SmallImages
from hobs_jax.data.registry import DatasetError, DataSource, register

# Per-channel mean/std of [0, 1]-scaled training images, for the small-image recipe.
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": FASHION_MNIST_MEAN_STD,
}
SPLIT_ALIASES = {"test": ("test", "validation"), "validation": ("validation", "test")}


def _how_to_provide(name: str, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return (f"prepare it on a machine with the data: `TFDS_DATA_DIR={where} tfds build {name} "
            f"--file_format=array_record`, or set TFDS_DATA_DIR to a directory that has it")


def _open(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # heavy import: only when a tfds source is built
    errors = []
    for candidate in SPLIT_ALIASES.get(split, (split,)):
        try:
            return tfds.data_source(name, split=candidate, data_dir=data_dir, download=False)
        except tfds.core.registered.DatasetNotFoundError:
            raise DatasetError(f"tfds has no dataset named {name!r}") from None
        except Exception as e:  # tfds raises several types for 'not prepared' / 'no split'
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise DatasetError(f"tfds dataset {name!r} split {split!r} is not available under "
                       f"{data_dir or os.environ.get('TFDS_DATA_DIR') or 'the default data dir'} "
                       f"({errors[-1]}); {_how_to_provide(name, data_dir)}")


@register("tfds")
def tfds_source(dataset: str, data_dir: str | None = None, splits: tuple[str, ...] = (
    "train", "test"), image_size: int | None = None, augment: bool = True,
                num_threads: int = 8) -> DataSource:
    """A tfds dataset (records with 'image' uint8 [H, W, C] and 'label').

    Args:
      dataset: tfds name, e.g. 'imagenet2012', 'cifar10'.
      data_dir: tfds data directory; default ``$TFDS_DATA_DIR``.
      splits: split names to open ('test' falls back to 'validation' and vice versa).
      image_size: output side for the ImageNet recipe (default 224); for small images an
        optional bilinear resize.
      augment: training augmentation on/off.
      num_threads: threads reading and decoding records.
    """
    import tensorflow_datasets as tfds
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    opened = {s: _open(dataset, s, data_dir) for s in splits}
    try:
        info = tfds.builder(dataset, data_dir=data_dir).info
        num_classes = info.features["label"].num_classes
        shape = tuple(info.features["image"].shape)
    except Exception as e:
        raise DatasetError(f"tfds dataset {dataset!r} has no readable 'image'/'label' features "
                           f"({type(e).__name__}); {_how_to_provide(dataset, data_dir)}") from None
    pool = futures.ThreadPoolExecutor(num_threads, thread_name_prefix=f"tfds-{dataset}")

    small = None not in shape and max(shape[:2]) <= 64
    if small:
        mean, std = MEAN_STD.get(dataset, IMAGENET_MEAN_STD)
        if len(mean) != shape[2]:
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        size = None if image_size is None else (image_size, image_size)
        pre = SmallImages(in_shape=shape, mean=mean, std=std, pad=4 if augment else 0,
                          flip=augment, resize_to=size)
    else:
        pre = ImageNetImages(size=image_size or 224)
        if not augment:  # an ImageNet pipeline without augmentation: eval transform for train
            pre = _EvalOnly(pre)

    def reader(split, indices):
        ds = opened[split]
        records = list(pool.map(ds.__getitem__, [int(i) for i in indices]))
        images = [r["image"] for r in records]
        labels = np.array([int(r["label"]) for r in records], np.int32)
        return (np.stack(images) if small else images), labels

    return DataSource(f"tfds:{dataset}", num_classes, {s: len(d) for s, d in opened.items()},
                      reader, pre)


class _EvalOnly:
    """Wraps a preprocessor so that it always applies its eval transform."""

    def __init__(self, inner):
        self.inner = inner
        self.noise_dim = inner.noise_dim
        self.out_shape = inner.out_shape

    def __call__(self, images, *, train, noise=None):
        del train, noise
        return self.inner(images, train=False)
