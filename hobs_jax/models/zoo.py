"""Registrations of the zoo models (imported by ``hobs_jax.models``)."""

from __future__ import annotations

from functools import partial

from hobs_jax.models.efficientnet import EfficientNetB0, b0_default_widths
from hobs_jax.models.mobilenet import MobileNetV2, mbv2_default_widths
from hobs_jax.models.registry import ModelEntry, register
from hobs_jax.models.resnet import ResNet, resnet_default_widths
from hobs_jax.models.vit import VIT_TINY_P4, VisionTransformer, vit_default_widths

_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2), False),
    "resnet34": ("basic", (3, 4, 6, 3), False),
    "resnet50": ("bottleneck", (3, 4, 6, 3), False),
    "resnet101": ("bottleneck", (3, 4, 23, 3), False),
    "resnet20": ("basic", (3, 3, 3), True),
    "resnet56": ("basic", (9, 9, 9), True),
}


def _resnet_factory(name, block, layers, cifar, widths, num_classes, in_channels, **kw):
    return ResNet(block=block, layers=layers, widths=widths, num_classes=num_classes,
                  in_channels=in_channels, cifar=cifar, arch=name, **kw)


for _name, (_block, _layers, _cifar) in _RESNETS.items():
    register(ModelEntry(
        name=_name,
        family="cifar_resnet" if _cifar else "resnet",
        default_widths=partial(resnet_default_widths, _block, _layers, _cifar),
        factory=partial(_resnet_factory, _name, _block, _layers, _cifar),
        input_size=32 if _cifar else 224,
        num_classes=10 if _cifar else 1000,
    ))

register(ModelEntry(
    name="mobilenet_v2", family="mobilenet_v2", default_widths=mbv2_default_widths,
    factory=lambda w, nc, ic, **kw: MobileNetV2(widths=w, num_classes=nc, in_channels=ic, **kw),
    input_size=224, num_classes=1000))

register(ModelEntry(
    name="efficientnet_b0", family="efficientnet", default_widths=b0_default_widths,
    factory=lambda w, nc, ic, **kw: EfficientNetB0(widths=w, num_classes=nc, in_channels=ic, **kw),
    input_size=224, num_classes=1000))

register(ModelEntry(
    name="vit_b_16", family="vit", default_widths=vit_default_widths,
    factory=lambda w, nc, ic, **kw: VisionTransformer(widths=w, num_classes=nc, in_channels=ic, **kw),
    input_size=224, num_classes=1000))

# Small-image forms for 28x28x1 Fashion-MNIST (and 32x32 CIFAR-style inputs): the stride-1
# stem and stage 2 of the pruning literature's CIFAR MobileNetV2 (mobilenet.py's and
# efficientnet.py's docstrings), and a ViT-Tiny-like transformer on 4x4 patches.
register(ModelEntry(
    name="mobilenet_v2_small", family="mobilenet_v2", default_widths=mbv2_default_widths,
    factory=lambda w, nc, ic, **kw: MobileNetV2(widths=w, num_classes=nc, in_channels=ic, small_input=True,
                                                arch="mobilenet_v2_small", **kw),
    input_size=28, num_classes=10, in_channels=1))

register(ModelEntry(
    name="efficientnet_b0_small", family="efficientnet", default_widths=b0_default_widths,
    factory=lambda w, nc, ic, **kw: EfficientNetB0(widths=w, num_classes=nc, in_channels=ic, small_input=True,
                                                   arch="efficientnet_b0_small", **kw),
    input_size=28, num_classes=10, in_channels=1))


def _vit_tiny_factory(w, nc, ic, **kw):
    arch = {k: v for k, v in VIT_TINY_P4.items() if k in ("num_layers", "patch_size", "image_size")}
    kw = {"scale_dim": VIT_TINY_P4["hidden"] // VIT_TINY_P4["heads"], **kw}
    return VisionTransformer(widths=w, num_classes=nc, in_channels=ic, arch="vit_tiny_p4", **arch, **kw)


register(ModelEntry(
    name="vit_tiny_p4", family="vit",
    default_widths=partial(vit_default_widths, VIT_TINY_P4["num_layers"], VIT_TINY_P4["hidden"],
                           VIT_TINY_P4["heads"], VIT_TINY_P4["mlp"]),
    factory=_vit_tiny_factory, input_size=28, num_classes=10, in_channels=1))
