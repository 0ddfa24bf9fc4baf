"""Torch reference models for the zoo: torchvision for the ImageNet models, a reference
definition for the CIFAR-style ResNets, and resizing to arbitrary (pruned) widths.

A pruned Flax model exports to the *same* torchvision module tree, with every layer
rebuilt at the sizes its Flax arrays have (:func:`resize_to`). Attention whose head
layout ``nn.MultiheadAttention`` cannot express (pruned heads, head dims, or a residual
width that is no longer heads x head_dim) becomes :class:`HeadAttention`, which keeps
torch's ``in_proj_weight`` / ``out_proj`` state-dict keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_DEPTHS = {"resnet20": (3, 3, 3), "resnet56": (9, 9, 9)}
TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2",
               "efficientnet_b0", "vit_b_16")
# The zoo's small-image forms: torchvision's model, then the same stride changes as the
# Flax side (hobs_jax.models.mobilenet / efficientnet docstrings): conv paths set to stride 1.
SMALL_STRIDE_ONE = {
    "mobilenet_v2_small": ("mobilenet_v2", ("features.0.0", "features.2.conv.1.0")),
    "efficientnet_b0_small": ("efficientnet_b0", ("features.0.0", "features.2.0.block.1.0")),
}


class CifarBasicBlock(nn.Module):
    """3x3 -> 3x3 residual block with a 1x1-conv projection where the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """He et al. (2016) Sec. 4.2 ResNet-(6n+2) for small images, any input channels.

    Module names follow torchvision (conv1, bn1, layer{s}.{j}, downsample, fc) so the
    same converter serves both families.
    """

    def __init__(self, layers=(3, 3, 3), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 16
        for s, n in enumerate(layers, start=1):
            planes, stride = 16 * 2 ** (s - 1), 1 if s == 1 else 2
            blocks = [CifarBasicBlock(inplanes if j == 0 else planes, planes,
                                      stride if j == 0 else 1, project=(j == 0 and stride != 1))
                      for j in range(n)]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            inplanes = planes
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class HeadAttention(nn.Module):
    """Self-attention with explicit heads x per-head q/k and v dims, torch keys kept.

    ``in_proj_weight`` is [heads*qk_dim*2 + heads*v_dim, D] (q, k, v stacked as in
    ``nn.MultiheadAttention``), ``out_proj`` maps heads*v_dim -> D. The softmax
    temperature is 1/sqrt(scale_dim), the unpruned head dim. Called like
    ``nn.MultiheadAttention(x, x, x, need_weights=False)`` and returns ``(out, None)``.
    """

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale_dim: int):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale_dim = heads, qk_dim, v_dim, scale_dim
        self.in_proj_weight = nn.Parameter(torch.empty(heads * (2 * qk_dim + v_dim), dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(heads * (2 * qk_dim + v_dim)))
        self.out_proj = nn.Linear(heads * v_dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query, key=None, value=None, need_weights: bool = False):
        b, s, _ = query.shape
        h, dq, dv = self.heads, self.qk_dim, self.v_dim
        proj = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = proj.split([h * dq, h * dq, h * dv], dim=-1)
        q = q.reshape(b, s, h, dq).transpose(1, 2)
        k = k.reshape(b, s, h, dq).transpose(1, 2)
        v = v.reshape(b, s, h, dv).transpose(1, 2)
        attn = torch.softmax((q / self.scale_dim ** 0.5) @ k.transpose(-1, -2), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, s, h * dv)
        return self.out_proj(o), None


def build_torch(name: str, num_classes: int | None = None, in_channels: int | None = None,
                seed: int = 0) -> nn.Module:
    """The torch reference of zoo model ``name`` at published widths (random init, eval).

    ``in_channels`` other than 3 rebuilds the first conv of a torchvision model.
    """
    import torchvision

    torch.manual_seed(seed)
    if name in CIFAR_DEPTHS:
        return CifarResNet(CIFAR_DEPTHS[name], num_classes or 10, in_channels or 3).eval()
    if name == "vit_tiny_p4":
        return _vit_tiny(num_classes or 10, 1 if in_channels is None else in_channels)
    known = TORCHVISION + tuple(CIFAR_DEPTHS) + tuple(SMALL_STRIDE_ONE) + ("vit_tiny_p4",)
    if name not in TORCHVISION and name not in SMALL_STRIDE_ONE:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")
    if name in SMALL_STRIDE_ONE:
        base, stride_one = SMALL_STRIDE_ONE[name]
        model = getattr(torchvision.models, base)(weights=None, num_classes=num_classes or 10)
        for path in stride_one:
            m = model.get_submodule(path)
            assert isinstance(m, nn.Conv2d) and m.stride == (2, 2), (name, path, m)
            m.stride = (1, 1)
        in_channels = 1 if in_channels is None else in_channels
    else:
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes or 1000)
    if in_channels not in (None, 3):
        first = _first_conv(model)
        _set_module(model, first, _like_conv(model.get_submodule(first), in_ch=in_channels))
    return model.eval()


def _vit_tiny(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ``VisionTransformer`` at the zoo's ``vit_tiny_p4`` size (28x28, patch 4)."""
    from torchvision.models.vision_transformer import VisionTransformer

    from hobs_jax.models.vit import VIT_TINY_P4 as T

    model = VisionTransformer(image_size=T["image_size"], patch_size=T["patch_size"], num_layers=T["num_layers"],
                              num_heads=T["heads"], hidden_dim=T["hidden"], mlp_dim=T["mlp"],
                              num_classes=num_classes)
    if in_channels != 3:
        _set_module(model, "conv_proj", _like_conv(model.conv_proj, in_ch=in_channels))
    return model.eval()


def _first_conv(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _like_conv(m: nn.Conv2d, in_ch: int | None = None, out_ch: int | None = None) -> nn.Conv2d:
    in_ch = m.in_channels if in_ch is None else in_ch
    out_ch = m.out_channels if out_ch is None else out_ch
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    groups = out_ch if depthwise else m.groups
    # torch types a conv's own geometry attributes as tuple[int, ...], its constructor as
    # tuple[int, int]: passed through unchanged.
    geometry: dict[str, Any] = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                    dilation=m.dilation)
    return nn.Conv2d(in_ch, out_ch, groups=groups, bias=m.bias is not None, dtype=m.weight.dtype, **geometry)


def resize_to(model: nn.Module, shapes: Mapping[str, tuple[int, ...]],
              attention: Mapping[str, tuple[int, int, int, int]] | None = None) -> nn.Module:
    """Rebuild every parameterized layer of ``model`` at the sizes in ``shapes``
    (torch ``state_dict`` key -> tensor shape), in place; returns ``model``.

    Only sizes change: kernel sizes, strides, paddings, depthwise-ness, biases and the
    module tree stay. ``attention`` maps an attention module's path to
    (heads, qk_dim, v_dim, scale_dim); such a module stays ``nn.MultiheadAttention``
    when that layout is the standard one, else becomes :class:`HeadAttention`.
    """
    for path, m in list(model.named_modules()):
        pre = f"{path}." if path else ""
        if isinstance(m, nn.Conv2d):
            o, i_per_group = shapes[pre + "weight"][:2]
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            i = o if depthwise else i_per_group * m.groups
            if (o, i) != (m.out_channels, m.in_channels):
                _set_module(model, path, _like_conv(m, i, o))
        elif isinstance(m, nn.Linear) and not path.endswith("out_proj"):
            o, i = shapes[pre + "weight"]
            if (o, i) != (m.out_features, m.in_features):
                _set_module(model, path, nn.Linear(i, o, bias=m.bias is not None, dtype=m.weight.dtype))
        elif isinstance(m, nn.BatchNorm2d):
            c = shapes[pre + "weight"][0]
            if c != m.num_features:
                _set_module(model, path, nn.BatchNorm2d(c, m.eps, m.momentum, dtype=m.weight.dtype))
        elif isinstance(m, nn.LayerNorm):
            c = shapes[pre + "weight"][0]
            if c != m.normalized_shape[0]:
                _set_module(model, path, nn.LayerNorm(c, m.eps, dtype=m.weight.dtype))
        elif isinstance(m, (nn.MultiheadAttention, HeadAttention)):
            if attention is None or path not in attention:
                raise ValueError(f"{path}: an attention module needs its (heads, qk, v, scale) layout in attention=")
            heads, qk, v, scale = attention[path]
            dim = shapes[pre + "in_proj_weight"][1]
            if isinstance(m, nn.MultiheadAttention) and (heads, qk, v, scale, dim) == (
                    m.num_heads, m.head_dim, m.head_dim, m.head_dim, m.embed_dim):
                continue
            _set_module(model, path, HeadAttention(dim, heads, qk, v, scale).to(m.in_proj_weight.dtype))
    # torchvision ViT's bare parameters, and the width its patch reshape reads.
    for key in ("class_token", "encoder.pos_embedding"):
        if key in shapes:
            owner_path, _, leaf = key.rpartition(".")
            owner = model.get_submodule(owner_path) if owner_path else model
            old = getattr(owner, leaf)
            if tuple(old.shape) != tuple(shapes[key]):
                setattr(owner, leaf, nn.Parameter(torch.zeros(shapes[key], dtype=old.dtype)))
    if hasattr(model, "hidden_dim") and "class_token" in shapes:
        setattr(model, "hidden_dim", int(shapes["class_token"][-1]))  # noqa: B010 (nn.Module's typed __setattr__)
    return model
