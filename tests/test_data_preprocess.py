"""Preprocessing: resize matches jax.image.resize, crop/flip geometry, ImageNet recipe."""

import jax
import numpy as np
import pytest

from hobs_jax.data import ImageNetImages, SmallImages, bilinear_resize, pad_crop_flip, random_resized_box


@pytest.mark.parametrize("size", [(56, 56), (14, 10), (224, 224)])
def test_bilinear_resize_matches_jax_image_resize(size):
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    ours = bilinear_resize(x, size)
    ref = np.asarray(jax.image.resize(x, (2, *size, 3), "linear"))
    assert ours.shape == (2, *size, 3)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_pad_crop_flip_geometry():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) + 1
    centre = np.array([[0.5, 0.5, 0.9], [0.5, 0.5, 0.9]])  # offset pad -> identity, no flip
    np.testing.assert_array_equal(pad_crop_flip(x, centre, 2, True), x)
    corner = np.array([[0.0, 0.0, 0.9], [0.0, 0.0, 0.1]])  # offset 0: shifted down-right
    out = pad_crop_flip(x, corner, 2, True)
    assert out[0, :2].sum() == 0 and out[0, :, :2].sum() == 0
    np.testing.assert_array_equal(out[0, 2:, 2:], x[0, :2, :2])
    np.testing.assert_array_equal(out[1, 2:, :2], x[1, :2, :2][:, ::-1])  # and flipped


def test_small_images_train_is_seeded_and_eval_is_plain():
    pre = SmallImages(in_shape=(28, 28, 1), mean=(0.5,), std=(0.25,), pad=4, flip=True)
    x = np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    noise = np.random.default_rng(2).random((8, 3))
    a = pre(x, train=True, noise=noise)
    np.testing.assert_array_equal(a, pre(x, train=True, noise=noise))
    assert not np.array_equal(a, pre(x, train=False))
    np.testing.assert_allclose(pre(x, train=False), (x / 255 - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="one noise row per image"):
        pre(x, train=True, noise=None)
    with pytest.raises(ValueError, match=r'expected \(28, 28, 1\)'):
        pre(x[:, :20], train=False)


def test_small_images_rejects_unreachable_channels():
    with pytest.raises(ValueError, match="channels=3 is not reachable from 2"):
        SmallImages(in_shape=(8, 8, 2), mean=(0.5,), std=(0.5,), channels=3)


def test_random_resized_box_stays_inside_and_respects_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(20, 300, 2)
        top, left, ch, cw = random_resized_box(int(h), int(w), rng.random(40))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        assert ch * cw >= 0.07 * h * w


def test_imagenet_recipe_shapes_and_eval_determinism():
    pre = ImageNetImages(size=32)
    imgs = [np.random.default_rng(i).integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)
            for i in range(3)]
    ev = pre(imgs, train=False)
    assert ev.shape == (3, 32, 32, 3) and ev.dtype == np.float32
    np.testing.assert_array_equal(ev, pre(imgs, train=False))
    tr = pre(imgs, train=True, noise=np.random.default_rng(0).random((3, pre.noise_dim)))
    assert tr.shape == (3, 32, 32, 3)
    grey = pre([imgs[0][..., 0]], train=False)
    assert grey.shape == (1, 32, 32, 3)
