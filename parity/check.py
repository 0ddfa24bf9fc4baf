"""The parity check: a torch reference and its Flax conversion must agree.

Procedure for one model (:func:`check_model`):

1. build the torch reference (torchvision ``weights=None``, or the CIFAR ResNet) with a
   fixed seed; parameters that torchvision initializes to exactly zero (ViT's head and
   class token, BN biases) get small random values so that no stage is trivially 0;
2. calibrate BatchNorm running statistics on real Fashion-MNIST training images
   (cumulative average, torch ``momentum=None``), resized to 224x224 and repeated to 3
   channels for the ImageNet models, so activations have trained-network scale;
3. convert to Flax (:func:`parity.convert.torch_to_flax`) in the requested dtype;
4. run both on a batch of Fashion-MNIST *test* images and compare every stage output
   (torch forward hooks vs. Flax ``sow``) and the logits.

The standard (issue "Foundation", point 4):
  float64: max|diff| / max|ref| <= 1e-12 at every stage and the logits;
  float32: logits ``allclose(rtol=1e-5, atol=1e-5)`` and, at every stage,
  max|diff| / max|ref| <= 1e-5 against torch float32, or, where torch float32 is itself
  further than that from the exact answer, the Flax float32 output no further from the
  float64 reference than ``ROUNDING_FACTOR`` (2) times torch float32's own error. The
  logits take the same floor elementwise: where they miss allclose, the largest
  |flax f32 - f64| must be <= ``ROUNDING_FACTOR`` x the largest |torch f32 - f64|.

Why the second clause: the float32 rounding floor depends on the CPU's kernels, and a
conversion bug shows up orders of magnitude above either bound while the float64 check
(1e-12) pins the arithmetic exactly; the machines and figures that set it:
docs/results/HISTORY.md ("The float32 parity floor").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hobs_jax import models
from hobs_jax.data.preprocess import FASHION_MNIST_MEAN_STD
from hobs_jax.models.layers import STAGE_SUFFIX
from parity.convert import torch_to_flax
from parity.torch_models import build_torch

REL_TOL = {"float32": 1e-5, "float64": 1e-12}
ROUNDING_FACTOR = 2.0  # float32: Flax's error vs float64 may be up to this times torch's own
ALL_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet20", "resnet56",
              "mobilenet_v2", "efficientnet_b0", "vit_b_16",
              "mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")
FMNIST_MEAN, FMNIST_STD = (v[0] for v in FASHION_MNIST_MEAN_STD)
# Trained BN-ResNets down-weight their residual branches (the reason for Goyal et al.'s
# zero-gamma init, arXiv:1706.02677); at unit gamma a random deep net amplifies float32
# rounding far beyond what a trained one does (torch float32 itself then misses 1e-5
# against torch float64). The reference therefore scales the gamma of the BN that ends
# each residual branch by this factor before calibrating the statistics.
RESIDUAL_GAMMA = 0.2


@dataclasses.dataclass(frozen=True)
class StageDiff:
    """Agreement of one stage: max|flax - torch|, max|torch| and their ratio; for float32
    runs also torch float32's and Flax float32's own errors against torch float64, each
    relative to max|float64 output| (the rounding floor and where Flax sits above it)."""

    stage: str
    max_abs_diff: float
    max_abs_ref: float
    torch_f32_rel: float | None = None
    flax_f32_rel: float | None = None

    @property
    def rel(self) -> float:
        return self.max_abs_diff / self.max_abs_ref if self.max_abs_ref > 0 else self.max_abs_diff

    def verdict(self, dtype: str) -> str:
        """'yes' (within the tolerance), 'floor' (float32 only: over 1e-5 against torch
        float32, but Flax is within ``ROUNDING_FACTOR`` x torch's own error of float64) or
        'NO'."""
        if self.rel <= REL_TOL[dtype]:
            return "yes"
        if (dtype == "float32" and self.torch_f32_rel is not None and self.flax_f32_rel is not None
                and self.flax_f32_rel <= ROUNDING_FACTOR * self.torch_f32_rel):
            return "floor"
        return "NO"


@dataclasses.dataclass(frozen=True)
class ParityResult:
    model: str
    dtype: str
    stages: tuple[StageDiff, ...]  # the last one is "logits"
    logits_allclose: bool | None  # float32 only
    # float32 only: where the logits miss allclose, whether Flax float32 is elementwise
    # no further from the float64 logits than ROUNDING_FACTOR x torch float32 is (the
    # stage rule's rounding floor, applied to the logits).
    logits_floor: bool | None = None

    @property
    def passed(self) -> bool:
        ok = all(s.verdict(self.dtype) != "NO" for s in self.stages)
        return ok and (self.logits_allclose is not False or bool(self.logits_floor))


def model_setup(name: str) -> dict[str, Any]:
    """Input size, channels and classes the parity run uses for ``name``."""
    entry = models.get_entry(name)
    if entry.family == "cifar_resnet":
        return dict(size=28, in_channels=1, num_classes=10)
    if entry.input_size == 28:  # the small-image forms: Fashion-MNIST as it is
        return dict(size=28, in_channels=entry.in_channels, num_classes=entry.num_classes)
    return dict(size=224, in_channels=3, num_classes=1000)


def stage_map(name: str) -> dict[str, str]:
    """Flax sow name -> torch module path of the same stage output."""
    fam = models.get_entry(name).family
    if fam in ("resnet", "cifar_resnet"):
        n = 3 if fam == "cifar_resnet" else 4
        m = {"stem": "relu" if fam == "cifar_resnet" else "maxpool"}
        m.update({f"layer{s}": f"layer{s}" for s in range(1, n + 1)})
        return m
    if fam == "vit":
        m = {"conv_proj": "conv_proj"}
        layers = sum(k.endswith(".heads") for k in models.default_widths(name))
        m.update({f"encoder_layer_{i}": f"encoder.layers.encoder_layer_{i}" for i in range(layers)})
        m["encoder"] = "encoder"
        return m
    n = 19 if fam == "mobilenet_v2" else 9
    return {f"features.{i}": f"features.{i}" for i in range(n)}


def fashion_images(split: str, n: int, size: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """``n`` normalized Fashion-MNIST images as NCHW, resized/repeated as requested."""
    from hobs_jax.data.fashion_mnist import load_split

    images = load_split(split)[0][:n, :, :, 0]  # [n, 28, 28] uint8, sha256-verified
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = (x - FMNIST_MEAN) / FMNIST_STD
    if size != 28:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, channels, 1, 1).to(dtype)


def residual_branch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm that ends each residual branch (ResNet bn2/bn3, the projection BN of
    MobileNetV2's and EfficientNet's residual blocks)."""
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from parity.torch_models import CifarBasicBlock

    out = []
    for m in model.modules():
        if isinstance(m, Bottleneck):
            out.append(m.bn3)
        elif isinstance(m, (BasicBlock, CifarBasicBlock)):
            out.append(m.bn2)
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            out.append(m.conv[-1])
        elif isinstance(m, MBConv) and m.use_res_connect:
            out.append(m.block[-1][1])
    return out


def calibrated_reference(name: str, dtype: torch.dtype = torch.float32, calib: int = 32,
                         seed: int = 0, residual_gamma: float = RESIDUAL_GAMMA) -> nn.Module:
    """The torch reference with zero-initialized tensors filled and BN statistics set
    from ``calib`` real training images (see module docstring)."""
    setup = model_setup(name)
    model = build_torch(name, setup["num_classes"], setup["in_channels"], seed=seed).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)  # same values in any dtype
    with torch.no_grad():
        for bn in residual_branch_norms(model):
            bn.weight.mul_(residual_gamma)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        x = fashion_images("train", calib, setup["size"], setup["in_channels"], dtype)
        with torch.no_grad():
            for chunk in x.split(16):
                model(chunk)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def _torch_stages(model: nn.Module, x: torch.Tensor, paths: dict[str, str]):
    captured, hooks = {}, []
    for stage, path in paths.items():
        def hook(_m, _inp, out, stage=stage):
            captured[stage] = out.detach().clone()
        hooks.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return captured, logits


def _flax_stages(model, variables, x: np.ndarray):
    run = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    logits, state = run(variables, jnp.asarray(x))
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        out[str(path[-2].key).removesuffix(STAGE_SUFFIX)] = np.asarray(leaf)
    return out, np.asarray(logits)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def check_model(name: str, dtype: str = "float32", batch: int = 2, calib: int = 32,
                seed: int = 0) -> ParityResult:
    """Compare torch and Flax for zoo model ``name``; see the module docstring."""
    if dtype not in REL_TOL:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    ref = calibrated_reference(name, tdtype, calib, seed)
    setup = model_setup(name)
    x = fashion_images("test", batch, setup["size"], setup["in_channels"], tdtype)
    with jax.enable_x64(dtype == "float64"):
        flax_model, variables = torch_to_flax(name, ref)
        paths = stage_map(name)
        t_stages, t_logits = _torch_stages(ref, x, paths)
        f_stages, f_logits = _flax_stages(flax_model, variables, _nhwc(x))
    torch_out = {**{st: _nhwc(t_stages[st]) for st in paths}, "logits": t_logits.numpy()}
    flax_out = {**f_stages, "logits": f_logits}
    for st, b in torch_out.items():
        if flax_out[st].shape != b.shape:
            raise ValueError(f"{name}: stage {st} shape {flax_out[st].shape} (flax) vs {b.shape} (torch)")
    floor, flax_err = {}, {}
    if dtype == "float32":  # the same reference in float64: how far each float32 run is
        import copy

        s64, l64 = _torch_stages(copy.deepcopy(ref).double(), x.double(), paths)
        exact = {**{st: _nhwc(s64[st]) for st in paths}, "logits": l64.numpy()}
        for st, e in exact.items():
            scale = np.abs(e).max()
            floor[st] = float(np.abs(torch_out[st] - e).max() / scale)
            flax_err[st] = float(np.abs(flax_out[st].astype(np.float64) - e).max() / scale)
    diffs = [StageDiff(st, float(np.abs(flax_out[st] - b).max()), float(np.abs(b).max()), floor.get(st),
                       flax_err.get(st)) for st, b in torch_out.items()]  # the stages, then "logits"
    close = (bool(np.allclose(f_logits, torch_out["logits"], rtol=1e-5, atol=1e-5)) if dtype == "float32"
             else None)
    logits_floor = None
    if close is False:  # two correct float32 runs can each be ~1e-5 from exact, in opposite directions
        torch_abs = np.abs(torch_out["logits"] - exact["logits"]).max()
        flax_abs = np.abs(f_logits.astype(np.float64) - exact["logits"]).max()
        logits_floor = bool(flax_abs <= ROUNDING_FACTOR * torch_abs)
    return ParityResult(name, dtype, tuple(diffs), close, logits_floor)


def format_result(r: ParityResult) -> str:
    """A per-stage table for one model."""
    tol = REL_TOL[r.dtype]
    f32 = r.dtype == "float32"
    lines = [f"{r.model} ({r.dtype}; tolerance max|diff|/max|ref| <= {tol:g}"
             + (f", or flax f32 vs f64 <= {ROUNDING_FACTOR:g} x torch f32 vs f64 ('floor'); "
                "logits allclose(rtol=1e-5, atol=1e-5)" if f32 else "") + ")",
             f"  {'stage':<22} {'max|diff|':>11} {'max|ref|':>11} {'rel':>10}  {'ok':<5}"
             + ("  torch f32 vs f64  flax f32 vs f64 (rel)" if f32 else "")]
    for s in r.stages:
        floor = (f"  {s.torch_f32_rel:16.2e}  {s.flax_f32_rel:15.2e}"
                 if s.torch_f32_rel is not None and s.flax_f32_rel is not None else "")
        lines.append(f"  {s.stage:<22} {s.max_abs_diff:11.3e} {s.max_abs_ref:11.3e} {s.rel:10.2e}  "
                     f"{s.verdict(r.dtype):<5}{floor}")
    if r.logits_allclose is not None:
        lines.append(f"  logits allclose(rtol=1e-5, atol=1e-5): {'yes' if r.logits_allclose else 'NO'}")
    if r.logits_floor is not None:
        lines.append(f"  logits within {ROUNDING_FACTOR:g} x torch f32's own error of f64 (floor): "
                     f"{'yes' if r.logits_floor else 'NO'}")
    lines.append(f"  => {'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)
