"""ResNet-18/34/50/101 (torchvision v1.5) and CIFAR-style ResNet-20/56, width-parameterized.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The ImageNet models
follow torchvision exactly (stride on the bottleneck's 3x3 conv, 1x1 projection
``downsample``); the CIFAR models are the 6n+2 networks of the paper's Sec. 4.2 with 1x1
projection shortcuts where the shape changes (as in Torch-Pruning's reproduce ResNet-56),
3 stages of 16/32/64 channels, no max-pool, any number of input channels.

Width entries (see :mod:`hobs_jax.models.widths`):
  ``conv1``              stem output; also stage 1's residual stream when stage 1 has no
                         projection (BasicBlock networks);
  ``layer{s}``           residual stream of stage s (where block 0 has a projection);
  ``layer{s}.{j}.conv1`` block inner width (and ``.conv2`` for bottlenecks).

Which blocks have a projection is fixed by the architecture (stride or expansion), never
by the widths, so pruning cannot change the topology.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from hobs_jax.models.layers import (
    Dense,
    Sequential,
    batch_norm,
    check_input,
    conv,
    global_avg_pool,
    max_pool_3x3_s2,
    sow_stage,
)
from hobs_jax.models.sparse import BlockELLSpec
from hobs_jax.models.widths import Widths

Array = jax.Array

# Torch's Linear default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _downsample(features: int, stride: int, train: bool) -> Sequential:
    return Sequential((lambda n: conv(features, 1, stride, name=n),
                       lambda n: batch_norm(train, name=n)), name="downsample")


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block. [B,H,W,C_in] -> [B,H/s,W/s,out]."""

    inner: int
    out: int
    stride: int = 1
    project: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = conv(self.inner, 3, self.stride, name="conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(self.out, 3, 1, name="conv2")(y)
        y = batch_norm(train, name="bn2")(y)
        identity = _downsample(self.out, self.stride, train)(x) if self.project else x
        return nn.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 residual block. [B,H,W,C_in] -> [B,H/s,W/s,out]."""

    inner1: int
    inner2: int
    out: int
    stride: int = 1
    project: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = nn.relu(batch_norm(train, name="bn1")(conv(self.inner1, 1, 1, name="conv1")(x)))
        y = nn.relu(batch_norm(train, name="bn2")(conv(self.inner2, 3, self.stride, name="conv2")(y)))
        y = batch_norm(train, name="bn3")(conv(self.out, 1, 1, name="conv3")(y))
        identity = _downsample(self.out, self.stride, train)(x) if self.project else x
        return nn.relu(y + identity)


class Stage(nn.Module):
    """One ``layer{s}``: blocks named "0", "1", ..."""

    blocks: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]  # (kind, block kwargs as items)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for j, (kind, kw) in enumerate(self.blocks):
            cls = BasicBlock if kind == "basic" else Bottleneck
            fields: dict[str, Any] = dict(kw)  # widths and strides, as the block's fields
            x = cls(**fields, name=str(j))(x, train)
        return x


def resnet_layout(block: str, layers: tuple[int, ...], cifar: bool):
    """Static facts of the architecture: stride per stage, projection per stage."""
    expansion = 4 if block == "bottleneck" else 1
    strides = (1, 2, 2) if cifar else (1, 2, 2, 2)
    if len(layers) != len(strides):
        raise ValueError(f"resnet: {len(layers)} stages given, expected {len(strides)}")
    # Block 0 of a stage projects when it strides or when expansion changes channels.
    projects = tuple(s != 1 or expansion != 1 for s in strides)
    return expansion, strides, projects


def stream_entry(s: int, projects: tuple[bool, ...]) -> str:
    """The width entry of stage s's residual stream (1-based s)."""
    return f"layer{s}" if projects[s - 1] else ("conv1" if s == 1 else stream_entry(s - 1, projects))


def resnet_default_widths(block: str, layers: tuple[int, ...], cifar: bool) -> dict[str, int]:
    """Widths of the published network (torchvision / He et al. CIFAR)."""
    expansion, _, projects = resnet_layout(block, layers, cifar)
    base = 16 if cifar else 64
    w = {"conv1": base}
    for s, n in enumerate(layers, start=1):
        planes = base * 2 ** (s - 1)
        if projects[s - 1]:
            w[f"layer{s}"] = planes * expansion
        for j in range(n):
            w[f"layer{s}.{j}.conv1"] = planes
            if block == "bottleneck":
                w[f"layer{s}.{j}.conv2"] = planes
    return w


class ResNet(nn.Module):
    """Width-parameterized ResNet. Input [B, H, W, in_channels] (NHWC) -> logits [B, num_classes].

    ``sow``s the stage outputs ("stem", "layer1", ...) into the ``intermediates``
    collection for the parity report.
    """

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]
    widths: Widths
    num_classes: int = 1000
    in_channels: int = 3
    cifar: bool = False
    arch: str = "resnet"
    block_ell: BlockELLSpec | None = None  # Block-ELL layers by path (models.sparse)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x, self.arch, self.in_channels)
        w = self.widths
        _, strides, projects = resnet_layout(self.block, self.layers, self.cifar)
        if self.cifar:
            x = conv(w["conv1"], 3, 1, name="conv1")(x)
            x = nn.relu(batch_norm(train, name="bn1")(x))
        else:
            x = conv(w["conv1"], 7, 2, name="conv1")(x)
            x = nn.relu(batch_norm(train, name="bn1")(x))
            x = max_pool_3x3_s2(x)
        sow_stage(self, "stem", x)
        for s, n in enumerate(self.layers, start=1):
            out = w[stream_entry(s, projects)]
            blocks = []
            for j in range(n):
                kw = dict(out=out, stride=strides[s - 1] if j == 0 else 1,
                          project=projects[s - 1] and j == 0)
                if self.block == "basic":
                    kw["inner"] = w[f"layer{s}.{j}.conv1"]
                else:
                    kw["inner1"] = w[f"layer{s}.{j}.conv1"]
                    kw["inner2"] = w[f"layer{s}.{j}.conv2"]
                blocks.append((self.block, tuple(sorted(kw.items()))))
            x = Stage(tuple(blocks), name=f"layer{s}")(x, train)
            sow_stage(self, f"layer{s}", x)
        x = global_avg_pool(x)
        return Dense(self.num_classes, kernel_init=_dense_init, name="fc")(x)
