"""ViT-B/16 (torchvision), width-parameterized with head-structured attention.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021. Pre-LN encoder blocks,
exact GELU, LayerNorm eps 1e-6, a class token and learned positional embeddings, as
torchvision's ``vit_b_16``.

Attention keeps heads as their own array axis (Flax's ``DenseGeneral`` layout): the
query/key/value kernels are [D, heads, head_dim] and the output kernel is
[heads, v_dim, D], so whole heads and per-head dimensions are separate channel axes a
pruner can cut. torch's packed ``in_proj_weight`` [3D, D] converts to and from this.
The softmax temperature stays 1/sqrt(``scale_dim``) (the original head dim) when
``qk_dim`` is pruned, so a pruned model equals the masked original.

Width entries:
  ``hidden``                   the residual stream (patch embedding, class token,
                               positional embedding, every LayerNorm, the head input);
  ``encoder_layer_{i}.heads``  attention heads of layer i;
  ``encoder_layer_{i}.qk_dim`` per-head query/key dimension;
  ``encoder_layer_{i}.v_dim``  per-head value dimension;
  ``encoder_layer_{i}.mlp``    MLP hidden units.

``vit_tiny_p4`` (:data:`VIT_TINY_P4`) is the same code at a small-image size: 28x28x1
inputs cut into 4x4 patches (7x7 = 49 tokens and the class token), 6 encoder layers of
ViT-Tiny's width 192 (Touvron et al., DeiT, ICML 2021) with 6 heads of 32 dimensions
(several heads, so whole-head pruning has choices) and MLP ratio 2. Patch 4 on a
28-pixel image is the small-dataset setting of Lee et al., "Vision Transformer for
Small-Size Datasets" (2021), and of the CIFAR ViTs that use 4x4 patches on 32x32 images.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hobs_jax.models.layers import Dense, Sequential, check_input, fn_layer, gelu_exact, sow_stage
from hobs_jax.models.sparse import BlockELLSpec
from hobs_jax.models.widths import Widths

Array = jax.Array


# The small-image ViT of the zoo (``vit_tiny_p4``): see the module docstring.
VIT_TINY_P4 = dict(image_size=28, patch_size=4, num_layers=6, hidden=192, heads=6, mlp=384)


def vit_default_widths(num_layers: int = 12, hidden: int = 768, heads: int = 12,
                       mlp: int = 3072) -> dict[str, int]:
    w = {"hidden": hidden}
    for i in range(num_layers):
        w[f"encoder_layer_{i}.heads"] = heads
        w[f"encoder_layer_{i}.qk_dim"] = hidden // heads
        w[f"encoder_layer_{i}.v_dim"] = hidden // heads
        w[f"encoder_layer_{i}.mlp"] = mlp
    return w


class SelfAttention(nn.Module):
    """Multi-head self-attention. [B, S, D] -> [B, S, D]."""

    heads: int
    qk_dim: int
    v_dim: int
    out_features: int
    scale_dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.xavier_uniform()  # DenseGeneral initializes the flattened [in, out] kernel
        q = nn.DenseGeneral((self.heads, self.qk_dim), kernel_init=init, name="query")(x)
        k = nn.DenseGeneral((self.heads, self.qk_dim), kernel_init=init, name="key")(x)
        v = nn.DenseGeneral((self.heads, self.v_dim), kernel_init=init, name="value")(x)
        q = q * (1.0 / jnp.sqrt(jnp.asarray(self.scale_dim, q.dtype)))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        probs = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        out_init = nn.initializers.xavier_uniform()
        return nn.DenseGeneral(self.out_features, axis=(-2, -1), kernel_init=out_init, name="out")(o)


class EncoderBlock(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(.)). [B, S, D] -> [B, S, D]."""

    hidden: int
    heads: int
    qk_dim: int
    v_dim: int
    mlp: int
    scale_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="ln_1")(x)
        y = SelfAttention(self.heads, self.qk_dim, self.v_dim, self.hidden, self.scale_dim,
                          name="self_attention")(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="ln_2")(x)
        dense = lambda f: (lambda n: Dense(f, kernel_init=nn.initializers.xavier_uniform(),
                                           bias_init=nn.initializers.normal(1e-6), name=n))
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = Sequential((dense(self.mlp), fn_layer(gelu_exact), fn_layer(drop),
                        dense(self.hidden), fn_layer(drop)), name="mlp")(y)
        return x + y


class Encoder(nn.Module):
    """Positional embedding + encoder blocks (``layers.encoder_layer_{i}``) + final LayerNorm."""

    widths: Widths
    num_layers: int
    seq_len: int
    scale_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        w = self.widths
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.seq_len, w["hidden"]))
        x = x + pos.astype(x.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        blocks = []
        for i in range(self.num_layers):
            e = f"encoder_layer_{i}"
            kw = dict(hidden=w["hidden"], heads=w[f"{e}.heads"], qk_dim=w[f"{e}.qk_dim"],
                      v_dim=w[f"{e}.v_dim"], mlp=w[f"{e}.mlp"], scale_dim=self.scale_dim,
                      dropout=self.dropout)
            blocks.append((e, kw))
        x = _Layers(tuple((e, tuple(sorted(kw.items()))) for e, kw in blocks), name="layers")(x, train)
        return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="ln")(x)


class _Layers(nn.Module):
    """torchvision's ``encoder.layers`` container (children ``encoder_layer_{i}``)."""

    blocks: tuple

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for name, kw in self.blocks:
            x = EncoderBlock(**dict(kw), name=name)(x, train)
            sow_stage(self, name, x)
        return x


class _Heads(nn.Module):
    """torchvision's ``heads`` container holding the ``head`` Linear."""

    num_classes: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


class VisionTransformer(nn.Module):
    """Input [B, image_size, image_size, 3] -> logits [B, num_classes]."""

    widths: Widths
    num_layers: int = 12
    patch_size: int = 16
    image_size: int = 224
    num_classes: int = 1000
    in_channels: int = 3
    scale_dim: int = 64
    dropout: float = 0.0
    arch: str = "vit_b_16"
    block_ell: BlockELLSpec | None = None  # Block-ELL layers by path (models.sparse)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x, self.arch, self.in_channels, self.image_size)
        d = self.widths["hidden"]
        p = self.patch_size
        fan_in = self.in_channels * p * p
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID",
                    kernel_init=nn.initializers.truncated_normal((1.0 / fan_in) ** 0.5),
                    name="conv_proj")(x)
        sow_stage(self, "conv_proj", x)
        b, h, wd, _ = x.shape
        x = x.reshape(b, h * wd, d)  # row-major patches, as torch's flatten(2).permute
        cls = self.param("class_token", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
        x = Encoder(self.widths, self.num_layers, h * wd + 1, self.scale_dim, self.dropout,
                    name="encoder")(x, train)
        sow_stage(self, "encoder", x)
        return _Heads(self.num_classes, name="heads")(x[:, 0])
