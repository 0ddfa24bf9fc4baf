"""Small Flax NNX networks outside the zoo: an MBConv CNN with squeeze-excitation and
BatchNorm, and a ViT on ``nnx.MultiHeadAttention``. Written as NNX users write them
(layers built in ``__init__`` with literal widths, user ``nnx.Module`` subclasses,
parameters the user creates: class token, position embedding, layer scale), for the
tests and examples of pruning NNX modules (:mod:`hobs_jax.graph.nnx_model`).

Build with ``MBConvNetNNX(rngs=nnx.Rngs(0))``; call on NHWC images in eval mode after
``model.eval()`` (the pruning adapter sets the modes itself).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MBConvNNX(nnx.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 -> squeeze-excitation -> 1x1
    project, BatchNorm and hard-swish, added to the input."""

    def __init__(self, dim: int, expand: int, squeeze: int, *, rngs: nnx.Rngs):
        self.expand = nnx.Conv(dim, expand, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(expand, momentum=0.9, rngs=rngs)
        self.dw = nnx.Conv(expand, expand, (3, 3), padding=1, feature_group_count=expand, use_bias=False,
                           rngs=rngs)
        self.bn2 = nnx.BatchNorm(expand, momentum=0.9, rngs=rngs)
        self.se1 = nnx.Linear(expand, squeeze, rngs=rngs)
        self.se2 = nnx.Linear(squeeze, expand, rngs=rngs)
        self.project = nnx.Conv(expand, dim, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(dim, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        y = nnx.hard_swish(self.bn1(self.expand(x)))
        y = nnx.hard_swish(self.bn2(self.dw(y)))
        s = nnx.hard_sigmoid(self.se2(nnx.relu(self.se1(y.mean(axis=(1, 2))))))
        y = y * s[:, None, None, :]
        return x + self.bn3(self.project(y))


class MBConvNetNNX(nnx.Module):
    """A conv-BN-hard-swish stem, ``blocks`` MBConv blocks (an ``nnx.List``), a classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, stem: int = 16, expand: int = 64,
                 squeeze: int = 16, blocks: int = 1, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(in_channels, stem, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(stem, momentum=0.9, rngs=rngs)
        self.blocks = nnx.List([MBConvNNX(stem, expand, squeeze, rngs=rngs) for _ in range(blocks)])
        self.head = nnx.Linear(stem, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.hard_swish(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


class EncoderNNX(nnx.Module):
    """Pre-norm transformer block: LayerNorm, ``nnx.MultiHeadAttention``, LayerNorm, MLP
    with GELU, both branches scaled by a learned layer scale."""

    def __init__(self, dim: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)
        self.scale = nnx.Param(jnp.full((dim,), 0.5))

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.scale[...] * self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class ViTNNX(nnx.Module):
    """Patch embedding, class token and position embedding (``nnx.Param`` of literal
    widths: NNX surgery replaces their arrays), ``depth`` encoder blocks, LayerNorm and a
    classifier on the class token."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dim: int = 16, patch: int = 4,
                 image: int = 16, heads: int = 2, mlp: int = 32, depth: int = 1, *, rngs: nnx.Rngs):
        n = (image // patch) ** 2
        self.embed = nnx.Conv(in_channels, dim, (patch, patch), strides=patch, rngs=rngs)
        self.cls = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n + 1, dim)))
        self.blocks = nnx.List([EncoderNNX(dim, heads, mlp, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, d)), x], axis=1) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


NNX_NETS = {"mbconv_nnx": MBConvNetNNX, "vit_nnx": ViTNNX}
