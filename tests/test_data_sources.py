"""Data source registry, Fashion-MNIST verification/parsing, synthetic and tfds sources."""

import os

import numpy as np
import pytest

from hobs_jax.data import SOURCES, DatasetError, get_source, register
from hobs_jax.data import fashion_mnist as fm

FMNIST_PRESENT = os.path.exists(os.path.join(fm.DEFAULT_DIR, "t10k-labels-idx1-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(not FMNIST_PRESENT, reason="dataset-fashion-mnist missing")


def test_registry_has_the_three_sources():
    assert {"fashion_mnist", "synthetic", "tfds"} <= set(SOURCES)


def test_unknown_source_is_a_one_line_error_listing_names():
    with pytest.raises(KeyError, match="unknown data source 'cifar11'.*synthetic") as e:
        get_source("cifar11")
    assert '\n' not in str(e.value)


def test_register_twice_is_rejected():
    with pytest.raises(ValueError, match="'synthetic' is already registered"):
        register("synthetic")(lambda: None)


@needs_fmnist
def test_fashion_mnist_shapes_labels_and_normalization():
    src = get_source("fashion_mnist")
    assert src.num_classes == 10 and src.image_shape == (28, 28, 1)
    assert src.split_sizes == {"train": 60000, "test": 10000}
    images, labels = fm.load_split("test")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    x, y = src.batch("train", np.arange(0, 60000, 6), train=False)
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    # normalized by the dataset mean/std (0.2860, 0.3530): about zero mean, unit std
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    assert y.dtype == np.int32 and y.max() == 9


@needs_fmnist
def test_fashion_mnist_resize_to_224x224x3():
    src = get_source("fashion_mnist", resize_to=(224, 224), channels=3)
    x, _ = src.batch("test", np.arange(2), train=False)
    assert x.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_missing_fashion_mnist_file_names_the_apt_fix(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_source("fashion_mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "missing" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert '\n' not in msg


@needs_fmnist
def test_truncated_or_corrupt_file_fails_size_then_sha256(tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    good = open(os.path.join(fm.DEFAULT_DIR, name), "rb").read()
    path = tmp_path / name
    path.write_bytes(good[:-10])
    with pytest.raises(DatasetError, match=r"has 5115 bytes, expected 5125.*apt-get install"):
        fm.read_verified(str(path))
    corrupt = bytearray(good)
    corrupt[100] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DatasetError, match=r"sha256.*apt-get install dataset-fashion-mnist"):
        fm.read_verified(str(path))
    path.write_bytes(good)
    assert len(fm.read_verified(str(path))) == 5125


def _idx(magic: bytes, dims, payload: bytes) -> bytes:
    return magic + np.asarray(dims, ">u4").tobytes() + payload


def test_parse_idx_checks_magic_dims_and_payload():
    ok = fm.parse_idx(_idx(b'\x00\x00\x08\x03', (2, 3, 4), bytes(range(24))), (2, 3, 4), "x")
    assert ok.shape == (2, 3, 4) and ok[1, 2, 3] == 23
    with pytest.raises(DatasetError, match="bad IDX magic 00000901"):
        fm.parse_idx(_idx(b'\x00\x00\x09\x01', (24,), bytes(24)), (24,), "x")
    with pytest.raises(DatasetError, match=r'IDX dims \(2, 3, 5\), expected \(2, 3, 4\)'):
        fm.parse_idx(_idx(b'\x00\x00\x08\x03', (2, 3, 5), bytes(30)), (2, 3, 4), "x")
    with pytest.raises(DatasetError, match="payload has 23 bytes, expected 24"):
        fm.parse_idx(_idx(b'\x00\x00\x08\x03', (2, 3, 4), bytes(23)), (2, 3, 4), "x")


def test_synthetic_is_deterministic_and_shaped():
    a = get_source("synthetic", image_shape=(8, 8, 3), num_classes=5, train_size=40, seed=3)
    b = get_source("synthetic", image_shape=(8, 8, 3), num_classes=5, train_size=40, seed=3)
    c = get_source("synthetic", image_shape=(8, 8, 3), num_classes=5, train_size=40, seed=4)
    xa, ya = a.read("train", np.arange(40))
    xb, yb = b.read("train", np.arange(40))
    xc, _ = c.read("train", np.arange(40))
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(xa, xc)
    assert xa.shape == (40, 8, 8, 3) and set(ya.tolist()) <= set(range(5))
    assert a.image_shape == (8, 8, 3) and a.num_classes == 5


def test_synthetic_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r'image_shape=\(8, 8\)'):
        get_source("synthetic", image_shape=(8, 8))


def test_unknown_split_names_the_split():
    with pytest.raises(KeyError, match="no split 'validation'"):
        get_source("synthetic").size("validation")


def test_tfds_cifar10_from_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        src = get_source("tfds:cifar10")
        x, y = src.batch("train", np.arange(5), train=True,
                         noise=np.random.default_rng(0).random((5, src.preprocess.noise_dim)))
    assert src.num_classes == 10 and src.image_shape == (32, 32, 3)
    assert src.split_sizes == {"train": 12, "test": 12}
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.shape == (5,)


def test_tfds_imagenet_from_mock_data_uses_imagenet_recipe():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        src = get_source("tfds", dataset="imagenet2012", splits=("train", "validation"),
                         image_size=64)
        x_eval, y = src.batch("validation", np.arange(4), train=False)
        noise = np.random.default_rng(0).random((4, src.preprocess.noise_dim))
        x_train, _ = src.batch("train", np.arange(4), train=True, noise=noise)
    assert src.num_classes == 1000 and src.image_shape == (64, 64, 3)
    assert x_eval.shape == x_train.shape == (4, 64, 64, 3)
    assert y.min() >= 0 and y.max() < 1000


def test_tfds_missing_dataset_says_how_to_provide_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetError) as e:
        get_source("tfds:cifar10", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "TFDS_DATA_DIR" in msg and "tfds build cifar10" in msg and '\n' not in msg
    with pytest.raises(DatasetError, match="no dataset named 'not_a_dataset_xyz'"):
        get_source("tfds:not_a_dataset_xyz", data_dir=str(tmp_path))
