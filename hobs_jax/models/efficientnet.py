"""EfficientNet-B0 (torchvision), width-parameterized.

Tan and Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019. MBConv blocks
with squeeze-and-excitation (squeeze width = block input // 4), SiLU, BN eps 1e-5,
stochastic depth (linearly increasing to 0.2, row mode; identity in eval) and dropout 0.2
before the classifier, as torchvision's ``efficientnet_b0``.

Width entries:
  ``features.0``              stem output;
  ``features.{s}``            output stream of stage s = 1..7 (its residual blocks share it);
  ``features.{s}.{j}.hidden`` expansion width of block j of stage s (expand ratio 6);
  ``features.{s}.{j}.se``     squeeze width of that block's SE module;
  ``features.8``              the last 1x1 conv (1280).
The depthwise conv and the SE gate of a block with expand ratio 1 run on its input
stream (stage 1: the stem).

Small-image form (``small_input=True``, registered as ``efficientnet_b0_small``): the stem
and the first block of stage 2 (``features.2.0``, 24 channels) run at stride 1, the same
change as ``mobilenet_v2_small`` (B0's stage strides 1, 2, 2, 2, 1, 2, 1 after a stride-2
stem are MobileNetV2's), so the total stride is 8 and a 28x28 image ends at 4x4.
kuangliu/pytorch-cifar ``models/efficientnet.py`` likewise runs its CIFAR EfficientNet-B0
stem at stride 1; we also keep stage 2 at stride 1 so both mobile nets see the same
feature-map sizes (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from hobs_jax.models.layers import (
    ConvBNAct,
    Dense,
    Sequential,
    StochasticDepth,
    check_input,
    check_min_size,
    conv,
    global_avg_pool,
    sowing,
)
from hobs_jax.models.sparse import BlockELLSpec
from hobs_jax.models.widths import Widths

Array = jax.Array

# torchvision _efficientnet_conf for B0: expand, kernel, stride, in, out, layers.
B0_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
              (6, 3, 1, 192, 320, 1))
_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


# The small-image form's changes: the stem and stage 2 at stride 1.
SMALL_STEM_STRIDE, SMALL_STRIDE_ONE_STAGES = 1, (2,)
SMALL_TOTAL_STRIDE = 8  # 2 ** (stride-2 stages left: 3, 4, 6)


def b0_layout(small_input: bool = False):
    """Per block: stage s (1-based), index j, expand, kernel, stride, in stream, residual.

    ``small_input``: the small-image form (module docstring)."""
    blocks, prev = [], "features.0"
    for s, (e, k, st, _, _, n) in enumerate(B0_SETTING, start=1):
        if small_input and s in SMALL_STRIDE_ONE_STAGES:
            st = 1
        for j in range(n):
            blocks.append(dict(s=s, j=j, expand=e, kernel=k, stride=st if j == 0 else 1,
                               in_stream=prev, stream=f"features.{s}", residual=j > 0))
            prev = f"features.{s}"
    return blocks


def b0_default_widths() -> dict[str, int]:
    w = {"features.0": 32}
    for s, (_, _, _, _, out, _) in enumerate(B0_SETTING, start=1):
        w[f"features.{s}"] = out
    for b in b0_layout():
        inp = w[b["in_stream"]]
        if b["expand"] != 1:
            w[f"features.{b['s']}.{b['j']}.hidden"] = inp * b["expand"]
        w[f"features.{b['s']}.{b['j']}.se"] = max(1, inp // 4)
    w["features.8"] = 1280
    return w


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: x * sigmoid(fc2(silu(fc1(avgpool(x)))))."""

    squeeze: int
    channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = nn.silu(conv(self.squeeze, 1, use_bias=True, name="fc1")(s))
        s = nn.sigmoid(conv(self.channels, 1, use_bias=True, name="fc2")(s))
        return x * s


class MBConv(nn.Module):
    """(1x1 expand) -> kxk depthwise -> SE -> 1x1 projection (+ stochastic depth residual)."""

    hidden: int
    squeeze: int
    out: int
    kernel: int
    stride: int
    expand: bool
    residual: bool
    drop_rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        layers = []
        if self.expand:
            layers.append(lambda n: (lambda y: ConvBNAct(self.hidden, 1, act=nn.silu, name=n)(y, train)))
        layers.append(lambda n: (lambda y: ConvBNAct(self.hidden, self.kernel, self.stride,
                                                     groups=self.hidden, act=nn.silu, name=n)(y, train)))
        layers.append(lambda n: SqueezeExcitation(self.squeeze, self.hidden, name=n))
        layers.append(lambda n: (lambda y: ConvBNAct(self.out, 1, act=None, name=n)(y, train)))
        y = Sequential(tuple(layers), name="block")(x)
        if not self.residual:
            return y
        y = StochasticDepth(self.drop_rate, name="stochastic_depth")(y, not train, lambda: self.make_rng("dropout"))
        return x + y


class EfficientNetB0(nn.Module):
    """Input [B, H, W, 3] -> logits [B, num_classes]; sows ``features.{i}`` outputs."""

    widths: Widths
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2
    arch: str = "efficientnet_b0"
    small_input: bool = False  # stride-1 stem and stage 2 (module docstring)
    block_ell: BlockELLSpec | None = None  # Block-ELL layers by path (models.sparse)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x, self.arch, self.in_channels)
        if self.small_input:
            check_min_size(x, self.arch, SMALL_TOTAL_STRIDE)
        w = self.widths
        layout = b0_layout(self.small_input)
        total = len(layout)
        stem = SMALL_STEM_STRIDE if self.small_input else 2
        feats: list[Callable[[str], Callable[[Array], Array]]] = [
            lambda n: (lambda y: ConvBNAct(w["features.0"], 3, stem, act=nn.silu, name=n)(y, train))]
        for s in range(1, len(B0_SETTING) + 1):
            stage = [(idx, b) for idx, b in enumerate(layout) if b["s"] == s]
            def stage_fn(n: str, stage: list = stage) -> Callable[[Array], Array]:
                return lambda y: _stage(w, self.stochastic_depth_prob, stage, total, n, y, train)

            feats.append(stage_fn)
        feats.append(lambda n: (lambda y: ConvBNAct(w["features.8"], 1, act=nn.silu, name=n)(y, train)))
        feats = [sowing(self, f, f"features.{k}") for k, f in enumerate(feats)]
        x = Sequential(tuple(feats), name="features")(x)
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Sequential((lambda n: (lambda y: y),
                           lambda n: Dense(self.num_classes, kernel_init=_linear_init, name=n)),
                          name="classifier")(x)


def _stage(w, sd_prob, stage, total, name, x, train):
    """features.{s}: the MBConv blocks of one stage, named "0", "1", ...

    A plain function, not a method, so the container is created as a child of the
    module that is running (``features``), not of the model.
    """
    factories = []
    for idx, b in stage:
        key = f"features.{b['s']}.{b['j']}"
        hidden = w[f"{key}.hidden"] if b["expand"] != 1 else w[b["in_stream"]]
        kw = dict(hidden=hidden, squeeze=w[f"{key}.se"], out=w[b["stream"]], kernel=b["kernel"],
                  stride=b["stride"], expand=b["expand"] != 1, residual=b["residual"],
                  drop_rate=sd_prob * idx / total)
        factories.append(lambda n, kw=kw: (lambda y: MBConv(**kw, name=n)(y, train)))
    return Sequential(tuple(factories), name=name)(x)
