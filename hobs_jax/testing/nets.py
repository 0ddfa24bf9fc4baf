"""Small linen networks the zoo does not contain, in the style of the architectures whose
pruning users ask about most (Torch-Pruning's issue tracker: concat growth, channel split
and shuffle, grouped convs, ConvNeXt blocks, squeeze-excitation, attention heads).

Every layer's width is a literal or an expression of the constructor's hyper-parameters
(``nn.Conv(self.width, (3, 3))``, ``nn.Dense(4 * d)``,
``nn.MultiHeadDotProductAttention(num_heads=2)``): there is no per-layer width field, so
they are pruned the way any user's module is (:mod:`hobs_jax.graph.linen_model`). Inputs
are NHWC images (16x16 in the tests, 28x28 for Fashion-MNIST); outputs are logits.
Defaults keep them tiny (a few thousand parameters) so tests are cheap.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def _bn(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class DenseNetTiny(nn.Module):
    """DenseNet-style growth: each layer BN-ReLU-conv3x3 on the concatenation of all
    earlier feature maps, appending ``growth`` channels; a BN-ReLU-conv1x1 transition
    and a global-average-pooled classifier."""

    num_classes: int = 10
    stem: int = 16
    growth: int = 8
    layers: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.stem, (3, 3), padding=1, use_bias=False)(x)
        for _ in range(self.layers):
            y = nn.relu(_bn(train)(x))
            y = nn.Conv(self.growth, (3, 3), padding=1, use_bias=False)(y)
            x = jnp.concatenate([x, y], axis=-1)
        x = nn.relu(_bn(train)(x))
        x = nn.Conv(self.stem, (1, 1), use_bias=False)(x)
        x = nn.relu(_bn(train)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class DenseNetFM(nn.Module):
    """A small DenseNet for 28x28x1 images (Fashion-MNIST), every width a literal: a
    conv3x3(32)-BN-ReLU stem and 2x2 max-pool (14x14), a dense block of three
    BN-ReLU-conv3x3(16) layers each appending its output to the concatenation
    (32 -> 80 channels), a BN-ReLU-conv1x1(64) transition and 2x2 average pool (7x7), a
    second dense block growing by 24 (64 -> 136), BN-ReLU, global average pool, a linear
    classifier. 85,850 parameters and 8.1M MACs per image.

    Concatenation growth is what the zoo lacks: every earlier layer's channels feed every
    later layer of its block, so pruning one group cuts the input of several convs at
    once. Plain convs only (no grouped or depthwise convs): a training step of ResNeXtTiny
    with cardinality 4 took 7.7x as long as with cardinality 1 (more MACs) on XLA:CPU
    (batch 128, 27 vs 208 images/s; docs/results/HISTORY.md), and most of the work sits at
    14x14 and 7x7 so that training runs at a few hundred images/s on a 2-core CPU
    (benchmarks/anymodel_fmnist.py, docs/results/anymodel_fmnist.md).
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_bn(train)(nn.Conv(32, (3, 3), padding=1, use_bias=False)(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        for _ in range(3):
            y = nn.Conv(16, (3, 3), padding=1, use_bias=False)(nn.relu(_bn(train)(x)))
            x = jnp.concatenate([x, y], axis=-1)
        x = nn.Conv(64, (1, 1), use_bias=False)(nn.relu(_bn(train)(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        for _ in range(3):
            y = nn.Conv(24, (3, 3), padding=1, use_bias=False)(nn.relu(_bn(train)(x)))
            x = jnp.concatenate([x, y], axis=-1)
        x = nn.relu(_bn(train)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle: [.., g * c] -> [.., g, c] -> [.., c, g] -> [.., g * c]."""
    *lead, c = x.shape
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: split the channels in two halves (``jnp.split``, so
    the split point follows the width), transform one half (1x1, depthwise 3x3, 1x1),
    concatenate and shuffle."""

    out: int = 8
    mid: int = 8
    shuffle: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x1, x2 = jnp.split(x, 2, axis=-1)
        y = nn.relu(_bn(train)(nn.Conv(self.mid, (1, 1), use_bias=False)(x2)))
        y = _bn(train)(nn.Conv(self.mid, (3, 3), padding=1, feature_group_count=self.mid, use_bias=False)(y))
        y = nn.relu(_bn(train)(nn.Conv(self.out, (1, 1), use_bias=False)(y)))
        x = jnp.concatenate([x1, y], axis=-1)
        return channel_shuffle(x, 2) if self.shuffle else x


class ShuffleNetTiny(nn.Module):
    """A conv-BN-ReLU stem, ``units`` ShuffleNetV2 units, a classifier."""

    num_classes: int = 10
    width: int = 16
    mid: int = 8
    units: int = 2
    shuffle: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_bn(train)(nn.Conv(self.width, (3, 3), padding=1, use_bias=False)(x)))
        for _ in range(self.units):
            x = ShuffleUnit(self.width // 2, self.mid, self.shuffle)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (``cardinality`` groups) -> 1x1, each
    followed by BN (ReLU but after the last), added to the input, ReLU."""

    out: int = 16
    width: int = 16
    cardinality: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(_bn(train)(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.width, (3, 3), padding=1, feature_group_count=self.cardinality, use_bias=False)(y)
        y = nn.relu(_bn(train)(y))
        y = _bn(train)(nn.Conv(self.out, (1, 1), use_bias=False)(y))
        return nn.relu(x + y)


class ResNeXtTiny(nn.Module):
    """A conv-BN-ReLU stem, ``blocks`` ResNeXt blocks at stride 1, a stride-2 conv and
    ``blocks`` more, a classifier."""

    num_classes: int = 10
    stem: int = 16
    width: int = 16
    cardinality: int = 4
    blocks: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_bn(train)(nn.Conv(self.stem, (3, 3), padding=1, use_bias=False)(x)))
        for _ in range(self.blocks):
            x = ResNeXtBlock(self.stem, self.width, self.cardinality)(x, train)
        x = nn.relu(_bn(train)(nn.Conv(2 * self.stem, (3, 3), strides=2, padding=1, use_bias=False)(x)))
        for _ in range(self.blocks):
            x = ResNeXtBlock(2 * self.stem, 2 * self.width, self.cardinality)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LayerNorm -> Dense(4 d) -> GELU -> Dense(d) ->
    layer scale -> residual. The layer scale is created from the input's width, as
    ``x.shape[-1]`` (a parameter created with a literal width could not follow pruning:
    its group would be listed as not prunable)."""

    dim: int = 16
    layer_scale: float = 1e-1

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.dim, (7, 7), padding=3, feature_group_count=self.dim)(x)
        y = nn.LayerNorm(epsilon=1e-6)(y)
        y = nn.gelu(nn.Dense(4 * self.dim)(y))
        y = nn.Dense(self.dim)(y)
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale), (x.shape[-1],))
        return x + gamma * y


class ConvNeXtTiny(nn.Module):
    """A 2x2 stride-2 patchify stem with LayerNorm, ``blocks`` ConvNeXt blocks, a final
    LayerNorm and a classifier on the pooled features (no BatchNorm anywhere)."""

    num_classes: int = 10
    dim: int = 16
    blocks: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(epsilon=1e-6)(nn.Conv(self.dim, (2, 2), strides=2)(x))
        for _ in range(self.blocks):
            x = ConvNeXtBlock(self.dim)(x)
        return nn.Dense(self.num_classes)(nn.LayerNorm(epsilon=1e-6)(x.mean(axis=(1, 2))))


class MBConv(nn.Module):
    """MobileNetV3/EfficientNet inverted residual: 1x1 expand -> depthwise 3x3 ->
    squeeze-excitation -> 1x1 project (+ input), hard-swish activations."""

    out: int = 8
    expand: int = 32
    squeeze: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.hard_swish(_bn(train)(nn.Conv(self.expand, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.expand, (3, 3), padding=1, feature_group_count=self.expand, use_bias=False)(y)
        y = nn.hard_swish(_bn(train)(y))
        s = nn.relu(nn.Dense(self.squeeze)(y.mean(axis=(1, 2))))
        s = nn.hard_sigmoid(nn.Dense(self.expand)(s))
        y = y * s[:, None, None, :]
        y = _bn(train)(nn.Conv(self.out, (1, 1), use_bias=False)(y))
        return x + y


class MBConvNetTiny(nn.Module):
    """A conv-BN-hard-swish stem, ``blocks`` MBConv blocks, a classifier."""

    num_classes: int = 10
    stem: int = 16
    expand: int = 64
    squeeze: int = 16
    blocks: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.hard_swish(_bn(train)(nn.Conv(self.stem, (3, 3), padding=1, use_bias=False)(x)))
        for _ in range(self.blocks):
            x = MBConv(self.stem, self.expand, self.squeeze)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block on Flax's ``MultiHeadDotProductAttention``."""

    dim: int = 16
    heads: int = 2
    mlp: int = 32

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
        y = nn.gelu(nn.Dense(self.mlp)(nn.LayerNorm()(x)))
        return x + nn.Dense(self.dim)(y)


class ViTTiny(nn.Module):
    """Patch embedding (a ``patch`` x ``patch`` stride conv), a class token and learned
    position embeddings (created from the embedding's width and the patch count),
    ``depth`` encoder blocks, LayerNorm, a classifier on the class token."""

    num_classes: int = 10
    dim: int = 16
    patch: int = 4
    heads: int = 2
    mlp: int = 32
    depth: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch)(x)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, h * w + 1, d))
        for _ in range(self.depth):
            x = EncoderBlock(self.dim, self.heads, self.mlp)(x)
        return nn.Dense(self.num_classes)(nn.LayerNorm()(x)[:, 0])


LINEN_NETS = {"densenet": DenseNetTiny, "shufflenet": ShuffleNetTiny, "resnext": ResNeXtTiny,
              "convnext": ConvNeXtTiny, "mbconv": MBConvNetTiny, "vit": ViTTiny}
