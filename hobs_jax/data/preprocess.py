"""Image preprocessing on the host, in numpy (deterministic given the noise array).

Two recipes:

* :class:`SmallImages` for fixed-size datasets (Fashion-MNIST, CIFAR, synthetic):
  training augmentation = random crop with zero padding + horizontal flip, vectorized over
  the batch; per-channel mean/std normalization; optionally a bilinear resize and a repeat
  to 3 channels (for calibrating ImageNet architectures on 28x28 data, e.g. 224x224x3).
* :class:`ImageNetImages` for variable-size photographs (tfds ``imagenet2012``): eval =
  resize the shorter side to ``size / 0.875`` and center crop; train = random-resized-crop
  (scale [0.08, 1], aspect ratio [3/4, 4/3], 10 tries then center crop) + flip; ImageNet
  mean/std.

Resizing uses one function, :func:`bilinear_resize`: separable triangle-kernel weights
with half-pixel centres and an antialiasing kernel when shrinking, i.e. the same maths as
``jax.image.resize(method='linear')``, computed with numpy matmuls so the data pipeline
never touches the accelerator and gives identical bytes on every host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

FASHION_MNIST_MEAN_STD = ((0.2860,), (0.3530,))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@functools.lru_cache(maxsize=64)
def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32 interpolation matrix (rows sum to 1)."""
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0)  # widen the kernel when shrinking (antialias)
    centers = (np.arange(out_size) + 0.5) / scale - 0.5
    taps = np.arange(in_size)
    w = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centers[:, None]) / kernel_scale)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return w.astype(np.float32)


def bilinear_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes float images [N, H, W, C] -> [N, size[0], size[1], C] (float32).

    Matches ``jax.image.resize(x, shape, 'linear')`` (half-pixel centres, antialiased when
    shrinking) to float32 rounding.
    """
    n, h, w, c = images.shape
    wy = _linear_weights(h, size[0])
    wx = _linear_weights(w, size[1])
    out = np.einsum("oh,nhwc->nowc", wy, images.astype(np.float32), optimize=True)
    return np.einsum("pw,nowc->nopc", wx, out, optimize=True)


def _normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    mean = np.asarray(mean, np.float32)
    inv_std = 1.0 / np.asarray(std, np.float32)
    return (x.astype(np.float32) * np.float32(1 / 255) - mean) * inv_std


def pad_crop_flip(images: np.ndarray, noise: np.ndarray, pad: int, flip: bool) -> np.ndarray:
    """Random crop of the zero-padded image + horizontal flip, vectorized.

    Args:
      images: [N, H, W, C] uint8 or float.
      noise: [N, >=3] uniform [0, 1): columns 0/1 choose the crop offset, 2 the flip.
      pad: zero padding on every side (crop offsets are uniform in [0, 2*pad]).
      flip: whether to flip with probability 1/2.
    Returns:
      [N, H, W, C], same dtype.
    """
    n, h, w, _ = images.shape
    if pad > 0:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        oy = np.minimum((noise[:, 0] * (2 * pad + 1)).astype(np.int64), 2 * pad)
        ox = np.minimum((noise[:, 1] * (2 * pad + 1)).astype(np.int64), 2 * pad)
        rows = oy[:, None] + np.arange(h)[None, :]
        cols = ox[:, None] + np.arange(w)[None, :]
        images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        do_flip = noise[:, 2] < 0.5
        images = np.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
    return images


@dataclasses.dataclass(frozen=True)
class SmallImages:
    """Preprocessing for fixed-size uint8 images [N, H, W, C].

    Attributes:
      in_shape: (H, W, C) of the raw images.
      mean, std: per-channel statistics of the [0, 1]-scaled raw images.
      pad: crop padding for training (0 disables the crop).
      flip: random horizontal flip for training.
      resize_to: optional (H', W') output size (bilinear, see :func:`bilinear_resize`).
      channels: optional output channel count; 1 -> 3 repeats the grey channel.
    """

    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    flip: bool = True
    resize_to: tuple[int, int] | None = None
    channels: int | None = None
    noise_dim: int = 3

    def __post_init__(self):
        c = self.in_shape[2]
        if len(self.mean) not in (1, c) or len(self.std) not in (1, c):
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} entries for {c} channels")
        if self.channels is not None and self.channels not in (c, 3) or (
            self.channels == 3 and c not in (1, 3)):
            raise ValueError(f"channels={self.channels} is not reachable from {c} input channels")

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, c = self.in_shape
        if self.resize_to is not None:
            h, w = self.resize_to
        return (h, w, self.channels or c)

    def __call__(self, images: np.ndarray, *, train: bool,
                 noise: np.ndarray | None = None) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, *out_shape]."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if tuple(images.shape[1:]) != tuple(self.in_shape):
            raise ValueError(f"images have shape {images.shape[1:]}, expected {self.in_shape}")
        if train and (self.pad > 0 or self.flip):
            if noise is None or noise.shape[0] != images.shape[0]:
                raise ValueError("training augmentation needs one noise row per image")
            images = pad_crop_flip(images, noise, self.pad, self.flip)
        x = _normalize(images, self.mean, self.std)
        if self.resize_to is not None and tuple(self.resize_to) != tuple(self.in_shape[:2]):
            x = bilinear_resize(x, (int(self.resize_to[0]), int(self.resize_to[1])))
        if self.channels == 3 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return np.ascontiguousarray(x, dtype=np.float32)


def _resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image  # pillow ships with matplotlib; only the ImageNet recipe needs it
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def random_resized_box(h: int, w: int, u: np.ndarray,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an Inception-style random crop.

    ``u`` holds 40 uniforms: 10 tries x (area, log-ratio, top, left); falls back to the
    largest centred crop with an in-range aspect ratio, as torchvision does.
    """
    area = h * w
    log_r = np.log(ratio)
    for t in range(10):
        a = area * (scale[0] + u[4 * t] * (scale[1] - scale[0]))
        r = np.exp(log_r[0] + u[4 * t + 1] * (log_r[1] - log_r[0]))
        cw = int(round(np.sqrt(a * r)))
        ch = int(round(np.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            top = min(int(u[4 * t + 2] * (h - ch + 1)), h - ch)
            left = min(int(u[4 * t + 3] * (w - cw + 1)), w - cw)
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclasses.dataclass(frozen=True)
class ImageNetImages:
    """Preprocessing for variable-size RGB photographs (a list of uint8 [H, W, 3]).

    Attributes:
      size: output side (224).
      crop_fraction: eval resizes the shorter side to ``round(size / crop_fraction)``.
      mean, std: normalization of the [0, 1]-scaled image (ImageNet statistics).
    """

    size: int = 224
    crop_fraction: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN_STD[0]
    std: tuple[float, ...] = IMAGENET_MEAN_STD[1]
    noise_dim: int = 41

    def __post_init__(self):
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction={self.crop_fraction} must be in (0, 1]")

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, 3)

    def _one(self, image: np.ndarray, train: bool, u: np.ndarray | None) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
        h, w = image.shape[:2]
        if train:
            assert u is not None  # training draws its uniforms per image
            top, left, ch, cw = random_resized_box(h, w, u[:40])
            out = _resize_uint8(np.ascontiguousarray(image[top:top + ch, left:left + cw]),
                                self.size, self.size)
            if u[40] < 0.5:
                out = out[:, ::-1]
            return out
        short = int(round(self.size / self.crop_fraction))
        nh, nw = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
        out = _resize_uint8(image, nh, nw)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2  # >= 0: short >= size
        return out[top:top + self.size, left:left + self.size]

    def __call__(self, images: Sequence[np.ndarray], *, train: bool,
                 noise: np.ndarray | None = None) -> np.ndarray:
        """list of uint8 [H_i, W_i, 3] -> float32 [N, size, size, 3]."""
        if train and (noise is None or len(noise) != len(images)):
            raise ValueError("training augmentation needs one noise row per image")
        out = np.stack([self._one(im, train, None if noise is None else noise[i])
                        for i, im in enumerate(images)])
        return _normalize(out, self.mean, self.std)
