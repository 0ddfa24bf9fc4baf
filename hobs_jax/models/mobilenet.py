"""MobileNetV2 (torchvision), width-parameterized.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Module paths follow torchvision (``features.{i}.conv.{k}``), ReLU6, BN eps 1e-5.

Width entries:
  ``features.0``          stem output (also the depthwise width of block 1, t = 1);
  ``features.{i}``        output stream of the stage whose first block is features.i
                          (the following residual blocks of that stage share it);
  ``features.{i}.hidden`` expansion width of block i (t = 6);
  ``features.18``         the last 1x1 conv (1280).

Small-image form (``small_input=True``, registered as ``mobilenet_v2_small``): the stem
and the first block of stage 2 (``features.2``, 24 channels) run at stride 1 instead of 2,
so the total stride is 8 instead of 32 and a 28x28 Fashion-MNIST (or 32x32 CIFAR) image
ends at a 4x4 map instead of 1x1. This is the CIFAR MobileNetV2 of the pruning
literature: kuangliu/pytorch-cifar ``models/mobilenetv2.py`` ("NOTE: change stride 2 -> 1
for CIFAR10" on ``conv1`` and on the ``(6, 24, 2, 1)`` stage), the CIFAR MobileNetV2 that
pruning papers benchmark. Widths, blocks and the module tree are torchvision's; only those
two strides change (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from hobs_jax.models.layers import (
    ConvBNAct,
    Dense,
    Sequential,
    batch_norm,
    check_input,
    check_min_size,
    conv,
    global_avg_pool,
    relu6,
    sowing,
)
from hobs_jax.models.sparse import BlockELLSpec
from hobs_jax.models.widths import Widths

Array = jax.Array

# torchvision's inverted_residual_setting: expansion t, channels c, repeats n, stride s.
MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_linear_init = nn.initializers.normal(0.01)


# The small-image form's changes: the stem and stage 2 (the setting's second row) at stride 1.
SMALL_STEM_STRIDE, SMALL_STRIDE_ONE_STAGES = 1, (1,)
SMALL_TOTAL_STRIDE = 8  # 2 ** (stride-2 stages left: 3, 4, 6)


def mbv2_layout(small_input: bool = False):
    """Per block i (1-based feature index): (t, stride, stream entry, residual).

    ``small_input``: the small-image form (module docstring)."""
    blocks, i = [], 1
    for row, (t, _, n, s) in enumerate(MBV2_SETTING):
        if small_input and row in SMALL_STRIDE_ONE_STAGES:
            s = 1
        first = i
        for j in range(n):
            blocks.append(dict(index=i, t=t, stride=s if j == 0 else 1,
                               stream=f"features.{first}", residual=j > 0))
            i += 1
    return blocks


def mbv2_default_widths() -> dict[str, int]:
    w = {"features.0": 32}
    for b, (_t, c, _n, _s) in zip(_first_blocks(), MBV2_SETTING):
        w[f"features.{b}"] = c
    prev = 32
    for blk in mbv2_layout():
        if blk["t"] != 1:
            w[f"features.{blk['index']}.hidden"] = prev * blk["t"]
        prev = w[blk["stream"]]
    w["features.18"] = 1280
    return w


def _first_blocks() -> list[int]:
    firsts, i = [], 1
    for _, _, n, _ in MBV2_SETTING:
        firsts.append(i)
        i += n
    return firsts


class InvertedResidual(nn.Module):
    """(1x1 expand) -> 3x3 depthwise -> 1x1 linear projection (+ residual)."""

    hidden: int
    out: int
    stride: int
    expand: bool
    residual: bool

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        layers = []
        if self.expand:
            layers.append(lambda n: (lambda y: ConvBNAct(self.hidden, 1, act=relu6, name=n)(y, train)))
        layers.append(lambda n: (lambda y: ConvBNAct(self.hidden, 3, self.stride, groups=self.hidden,
                                                     act=relu6, name=n)(y, train)))
        layers.append(lambda n: conv(self.out, 1, 1, name=n))
        layers.append(lambda n: batch_norm(train, name=n))
        y = Sequential(tuple(layers), name="conv")(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Input [B, H, W, 3] -> logits [B, num_classes]; sows ``features.{i}`` outputs."""

    widths: Widths
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.2
    arch: str = "mobilenet_v2"
    small_input: bool = False  # stride-1 stem and stage 2 (module docstring)
    block_ell: BlockELLSpec | None = None  # Block-ELL layers by path (models.sparse)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x, self.arch, self.in_channels)
        if self.small_input:
            check_min_size(x, self.arch, SMALL_TOTAL_STRIDE)
        w = self.widths
        stem = SMALL_STEM_STRIDE if self.small_input else 2
        feats: list[Callable[[str], Callable[[Array], Array]]] = []
        feats.append(lambda n: (lambda y: ConvBNAct(w["features.0"], 3, stem, act=relu6, name=n)(y, train)))
        prev = "features.0"
        for blk in mbv2_layout(self.small_input):
            i = blk["index"]
            hidden = w[f"features.{i}.hidden"] if blk["t"] != 1 else w[prev]
            kw = dict(hidden=hidden, out=w[blk["stream"]], stride=blk["stride"],
                      expand=blk["t"] != 1, residual=blk["residual"])
            def block(n: str, kw: dict = kw) -> Callable[[Array], Array]:
                return lambda y: InvertedResidual(**kw, name=n)(y, train)

            feats.append(block)
            prev = blk["stream"]
        feats.append(lambda n: (lambda y: ConvBNAct(w["features.18"], 1, act=relu6, name=n)(y, train)))
        feats = [sowing(self, f, f"features.{k}") for k, f in enumerate(feats)]
        x = Sequential(tuple(feats), name="features")(x)
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Sequential((lambda n: (lambda y: y),  # classifier.0 is Dropout (applied above)
                           lambda n: Dense(self.num_classes, kernel_init=_linear_init, name=n)),
                          name="classifier")(x)
