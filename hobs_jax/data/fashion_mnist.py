"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files).

Every file is checked against its recorded size and sha256 before it is parsed (Debian
recompressed the files, so these digests differ from upstream's), and the IDX headers
are checked (magic number, rank, dimensions) against the expected 60000/10000 x 28 x 28.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os

import numpy as np

from hobs_jax.data.preprocess import FASHION_MNIST_MEAN_STD, SmallImages
from hobs_jax.data.registry import DataSource, DatasetError, register

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FIX = "install it with `apt-get install dataset-fashion-mnist`"
NUM_CLASSES = 10
SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}

# file name -> (size in bytes, sha256) of the Debian package's files.
FILES = {
    "train-images-idx3-ubyte.gz":
        (26421856, "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz":
        (29491, "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz":
        (4422079, "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz":
        (5125, "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}


def _fix(path: str) -> str:
    """What to do about a bad file at ``path``: install the package, and, for a folder
    other than the package's, say where the package puts the files."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder == DEFAULT_DIR:
        return FIX
    return f"data.data_dir is {folder}: point it at the four files, or {FIX} and leave data.data_dir empty"


def read_verified(path: str) -> bytes:
    """Raw bytes of one of :data:`FILES` after checking its size and sha256."""
    name = os.path.basename(path)
    size, digest = FILES[name]
    if not os.path.isfile(path):
        raise DatasetError(f"Fashion-MNIST file {path} is missing; {_fix(path)}")
    actual = os.path.getsize(path)
    if actual != size:
        raise DatasetError(f"Fashion-MNIST file {path} has {actual} bytes, expected {size} "
                           f"(truncated or replaced); reinstall: {_fix(path)}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"Fashion-MNIST file {path} is not readable ({e.strerror})") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise DatasetError(f"Fashion-MNIST file {path} fails its sha256 check (corrupt); "
                           f"reinstall: {_fix(path)}")
    return data


def parse_idx(data: bytes, dims: tuple[int, ...], what: str) -> np.ndarray:
    """Parses an uncompressed IDX unsigned-byte array and checks its header.

    Args:
      data: the file's bytes: magic (0, 0, 0x08 = ubyte, rank), rank big-endian uint32
        dimensions, then the payload.
      dims: the expected dimensions, e.g. (60000, 28, 28).
      what: a name for error messages.
    Returns:
      uint8 array of shape ``dims``.
    """
    rank = len(dims)
    if len(data) < 4 + 4 * rank:
        raise DatasetError(f"{what}: IDX file too short for its header; {FIX}")
    magic = data[:4]
    if magic[:3] != b'\x00\x00\x08' or magic[3] != rank:
        raise DatasetError(f"{what}: bad IDX magic {magic.hex()} (expected 000008{rank:02x}); {FIX}")
    header = tuple(int(d) for d in np.frombuffer(data[4:4 + 4 * rank], dtype=">u4"))
    if header != tuple(dims):
        raise DatasetError(f"{what}: IDX dims {header}, expected {tuple(dims)}; {FIX}")
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if payload.size != int(np.prod(dims)):
        raise DatasetError(f"{what}: IDX payload has {payload.size} bytes, "
                           f"expected {int(np.prod(dims))}; {FIX}")
    return payload.reshape(dims)


@functools.lru_cache(maxsize=4)
def load_split(split: str, data_dir: str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28, 1] and int32 labels [N] of 'train' (60000) or 'test' (10000)."""
    if split not in SPLITS:
        raise KeyError(f"Fashion-MNIST has no split {split!r}; available: {sorted(SPLITS)}")
    prefix, n = SPLITS[split]
    images_path = os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")
    images = parse_idx(gzip.decompress(read_verified(images_path)), (n, 28, 28), images_path)
    labels = parse_idx(gzip.decompress(read_verified(labels_path)), (n,), labels_path)
    if labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{labels_path}: label {labels.max()} >= {NUM_CLASSES}; {FIX}")
    images = images[..., None]
    images.flags.writeable = False
    labels = labels.astype(np.int32)
    labels.flags.writeable = False
    return images, labels


@register("fashion_mnist")
def fashion_mnist(data_dir: str = DEFAULT_DIR, augment: bool = True,
                  resize_to: tuple[int, int] | None = None,
                  channels: int | None = None) -> DataSource:
    """Fashion-MNIST as [N, 28, 28, 1] float32 normalized by mean/std (0.2860, 0.3530).

    Args:
      data_dir: directory of the four gzipped IDX files.
      augment: training augmentation (4-pixel pad + random crop, horizontal flip).
      resize_to: e.g. (224, 224) to feed ImageNet architectures (bilinear).
      channels: 3 repeats the grey channel.
    """
    # Verify and load eagerly so a missing/corrupt file fails here, before any compute.
    arrays = {s: load_split(s, data_dir) for s in SPLITS}

    def reader(split, indices):
        images, labels = arrays[split]
        return images[indices], labels[indices]

    pre = SmallImages(in_shape=(28, 28, 1), mean=FASHION_MNIST_MEAN_STD[0],
                      std=FASHION_MNIST_MEAN_STD[1], pad=4 if augment else 0, flip=augment,
                      resize_to=None if resize_to is None else tuple(resize_to),
                      channels=channels)
    return DataSource("fashion_mnist", NUM_CLASSES, {s: n for s, (_, n) in SPLITS.items()},
                      reader, pre)
