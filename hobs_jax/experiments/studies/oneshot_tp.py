"""The Torch-Pruning side of ``benchmarks/oneshot_fmnist.py``: the peer's own pruners on
the same dense checkpoint, at the same MACs target. Runs in a spawned subprocess (the
main process never imports torch, so JAX timings are not disturbed).

The dense Flax variables are converted to PyTorch (``parity.convert.flax_to_torch``),
pruned by Torch-Pruning 1.6.1 with one of

    l1        MagnitudePruner + MagnitudeImportance(p=1)        (TP benchmark "l1")
    groupnorm GroupNormPruner + GroupMagnitudeImportance(p=2)   (TP "group_norm"; no sparse training)
    bnscale   MagnitudePruner + BNScaleImportance()              (TP "slim" criterion, no training;
                                                                  ResNets only: a ViT has no BN)
    taylor    MagnitudePruner + TaylorImportance()               (gradients of the CE loss on
                                                                  the calibration images)

(``global_pruning`` True/False), and converted back with ``parity.convert.torch_to_flax``.
TP's ``pruning_ratio`` is a channel ratio, not a MACs ratio, so it is found by bisection
until OUR analytic MACs count (``hobs_jax.macs.count``, attention's two matmuls included
for a ViT) of the converted model is within ``tol`` of the target (a step function: where
local pruning steps past the target at once, the two ratios around the step are split
between layers, :func:`prune`; when still no attempt lands inside, the closest is
returned and the caller refuses the row).

**ResNets**: channel pruning with ``ignored_layers=[fc]`` (the classifier keeps its classes).

**ViTs** (tested on ``vit_tiny_p4``; ``vit_b_16`` is the same torchvision class):
Torch-Pruning's whole-head pruning as in its ``examples/transformers/prune_timm_vit.py``
(Fang et al., DepGraph, CVPR 2023). TP cannot cut heads out of torchvision's
``nn.MultiheadAttention`` (it sees one layer whose input and output are the residual
stream; its ``MultiheadAttentionPruner`` only shrinks ``embed_dim``, so its torchvision ViT
example prunes the residual width rounded to the head count and narrows every head), so
each attention is first rewritten in timm's layout with the same numbers
(:mod:`parity.qkv_attention`: one ``qkv`` Linear [3*heads*head_dim, D], torch's packed
``in_proj_weight`` as is). Then, per layer, ``num_heads={qkv: heads}``,
``prune_num_heads=True``, ``prune_head_dims=False`` (whole heads; head dim stays 32) and
``head_pruning_ratio = pruning_ratio`` (one knob for the bisection), so TP removes
``ceil(ratio * heads)`` heads a layer (local) or ranks the mean L1/L2/Taylor score of every
head of the network (global), and the MLP hidden units by the same ratio. Ignored: the
classifier ``heads`` (as every TP example), and the layers that write the residual stream
(``conv_proj``, every attention ``out_proj``, every MLP ``fc2``; ignoring any one of them
blocks TP's residual group, which is what the example's ``--bottleneck`` flag does by
ignoring ``fc2``: "only prune the internal layers of FFN & Attention"). The residual width,
class token and positional embedding stay whole, so every MACs saved comes from whole
heads and MLP units: the head pruning issue 19 asks of TP. (Pruning the residual stream
too, as TP's torchvision example does, would narrow every head rather than remove one.)
After ``step()`` each attention's ``num_heads`` is read back from the pruner and
``head_dim = qkv.out_features // (3 * num_heads)``, as the example does; an attempt that
empties a layer of heads or MLP units (possible in global ranking) is refused as
over-pruned.

Softmax temperature: the rewritten attention keeps 1/sqrt(32), the original head dim,
and with whole heads the head dim does not change, so the pruned torch model and the
converted Flax model (``scale_dim`` 32) compute the same function (checked in
tests/test_oneshot_tp.py). Had TP shrunk ``embed_dim`` inside ``nn.MultiheadAttention``
instead (its torchvision example), torch would scale by 1/sqrt(new embed_dim //
num_heads): checked here, ``vit_tiny_p4`` at ratio 0.5 with ``round_to=6`` has head dim 16
and ``nn.MultiheadAttention`` then equals a head attention with ``scale_dim`` 16, not 32
(``torch_to_flax`` reads that scale off the module's ``head_dim``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

KINDS = ("l1", "groupnorm", "bnscale", "taylor")


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.pruner.MagnitudePruner, tp.importance.MagnitudeImportance(p=1)
    if kind == "groupnorm":
        return tp.pruner.GroupNormPruner, tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bnscale":
        return tp.pruner.MagnitudePruner, tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.pruner.MagnitudePruner, tp.importance.TaylorImportance()
    raise ValueError(f"unknown Torch-Pruning criterion {kind!r}; use one of {KINDS}")


def _vit_options(model, attentions, ratio: float) -> dict:
    """TP's head-pruning arguments for a torchvision ViT whose attentions are QKVAttention."""
    from torch import nn

    fc2 = [[m for m in blk.mlp.modules() if isinstance(m, nn.Linear)][-1] for blk in model.encoder.layers]
    return dict(ignored_layers=[model.heads, model.conv_proj, *(a.out_proj for a in attentions), *fc2],
                num_heads={a.qkv: a.num_heads for a in attentions}, prune_num_heads=True,
                prune_head_dims=False, head_pruning_ratio=ratio,
                # torchvision's bare parameters, named with their residual axis (TP would guess
                # the same last axis, with a warning); the residual group is ignored anyway
                unwrapped_parameters=[(model.class_token, 2), (model.encoder.pos_embedding, 2)])


def _classifier(model):
    """The output layer Torch-Pruning must keep whole: the last ``nn.Linear`` (torchvision's
    ResNet ``fc``, MobileNetV2's / EfficientNet's ``classifier[1]``)."""
    import torch

    linears = [mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier for Torch-Pruning to keep")
    return linears[-1]


def tp_prune(model, kind: str, ratio: float, global_pruning: bool, example,
             calib_images: np.ndarray | None = None, calib_labels: np.ndarray | None = None,
             layer_ratios: Mapping[str, float] | None = None):
    """Prune a copy of torch ``model`` (a zoo model's torch reference) with Torch-Pruning at
    channel ratio ``ratio``; returns the pruned copy (module docstring). A ViT comes back
    with :class:`parity.qkv_attention.QKVAttention` attention at its pruned head counts.
    ``layer_ratios``: module path -> ratio for those layers instead (TP's own
    ``pruning_ratio_dict``; the ratio of a group is its root layer's).

    ``calib_images`` [N, H, W, C] float32 and ``calib_labels`` [N] feed the Taylor
    criterion's loss gradients. Deterministic: the same inputs give the same network.
    """
    import torch

    from parity.qkv_attention import to_qkv_attention

    cls, imp = _importance(kind)
    m = copy.deepcopy(model)
    attentions = to_qkv_attention(m)
    if attentions and kind == "bnscale":
        raise ValueError("Torch-Pruning criterion 'bnscale' ranks BatchNorm scales; a ViT has none")
    opts = _vit_options(m, attentions, ratio) if attentions else dict(ignored_layers=[_classifier(m)])
    if layer_ratios:
        opts["pruning_ratio_dict"] = {m.get_submodule(path): float(r) for path, r in layer_ratios.items()}
    pruner = cls(m, example, importance=imp, pruning_ratio=ratio, global_pruning=global_pruning, **opts)
    if kind == "taylor":
        if calib_images is None or calib_labels is None:
            raise ValueError("the Taylor criterion needs calib_images and calib_labels")
        m.zero_grad()
        x = torch.from_numpy(np.ascontiguousarray(calib_images.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(calib_labels.astype(np.int64))
        for i in range(0, len(x), 256):
            loss = torch.nn.functional.cross_entropy(m(x[i:i + 256]), y[i:i + 256], reduction="sum") / len(x)
            loss.backward()
    pruner.step()
    for a in attentions:  # as TP's ViT examples do after pruning
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads) if a.num_heads else 0
    return m


def _emptied(model) -> str | None:
    """The first layer Torch-Pruning left without heads or units, else None."""
    from torch import nn

    from parity.qkv_attention import QKVAttention

    for path, m in model.named_modules():
        if isinstance(m, QKVAttention) and m.num_heads == 0:
            return f"{path} has no heads left"
        if isinstance(m, nn.Linear) and 0 in m.weight.shape:
            return f"{path} has no units left"
    return None


def prune(model_name: str, variables: Mapping, target: float, kind: str, global_pruning: bool,
          input_shape: tuple[int, ...], calib_images: np.ndarray | None = None,
          calib_labels: np.ndarray | None = None, tol: float = 0.01, max_iters: int = 40) -> dict:
    """Bisection on TP's ``pruning_ratio`` for ``target`` kept MACs (our counter).

    Local (per-layer) pruning of a network whose widths share a factor jumps where every
    layer's channel count steps at once: ResNet-56's 16/32/64 channels all step at ratio
    13/32, from 0.340 to 0.323 of the MACs, so no single ratio lands within 1% of 1/3.
    Then the two ratios around the jump are split (:func:`_split`): the first ``k``
    prunable layers in network order take the higher one through TP's own
    ``pruning_ratio_dict``, with ``k`` bisected to the target, so the network is still cut
    by one ratio up to a single channel per layer.

    Returns {'variables': Flax numpy variables of the pruned model, 'pruning_ratio',
    'macs_ratio', 'attempts': [(ratio, macs_ratio or None if it emptied a layer), ...],
    'within_tol': bool, 'scale_dim': the softmax head dim to build a ViT with (None
    otherwise), 'split': None or {'ratio': the higher ratio, 'layers': the k layer
    paths that took it, 'attempts': [(k, macs_ratio), ...]}}.
    """
    if kind == "taylor" and (calib_images is None or calib_labels is None):
        raise ValueError("the Taylor criterion needs calib_images and calib_labels")
    if kind not in KINDS:
        raise ValueError(f"unknown Torch-Pruning criterion {kind!r}; use one of {KINDS}")
    from hobs_jax import macs, models

    vit = models.get_entry(model_name).family == "vit"
    if vit and kind == "bnscale":
        raise ValueError(f"{model_name}: Torch-Pruning criterion 'bnscale' ranks BatchNorm scales; a ViT has none")
    import torch

    from parity.convert import flax_to_torch, torch_to_flax
    from parity.qkv_attention import to_head_attention

    torch.manual_seed(0)
    torch.set_num_threads(2)
    dense_t = flax_to_torch(model_name, variables).float().eval()
    widths, nc, ic = models.infer_widths(model_name, variables)
    dense_f = models.build(model_name, widths=widths, num_classes=nc, in_channels=ic)
    shape = (1,) + tuple(input_shape[1:])
    base = macs.count(dense_f, variables, shape).macs
    example = torch.zeros(1, shape[3], shape[1], shape[2])

    def attempt(ratio: float, layer_ratios: Mapping[str, float] | None = None):
        m = tp_prune(dense_t, kind, ratio, global_pruning, example, calib_images, calib_labels, layer_ratios)
        if _emptied(m) is not None:
            return None, None, None
        fm, fv = torch_to_flax(model_name, to_head_attention(m))
        return macs.count(fm, fv, shape).macs / base, fv, getattr(fm, "scale_dim", None) if vit else None

    lo, hi = 0.0, 0.95  # MACs kept fall as the channel ratio grows
    attempts: list[tuple[float, float | None]] = []
    best: tuple[float, float, Any, Any] | None = None
    for _ in range(max_iters):
        mid = (lo + hi) / 2
        r, v, sd = attempt(mid)
        attempts.append((mid, r))
        if r is None:  # over-pruned: a layer lost all its heads or units
            hi = mid
            continue
        if best is None or abs(r / target - 1) < abs(best[1] / target - 1):
            best = (mid, r, v, sd)
        if abs(r / target - 1) <= tol / 2 or hi - lo < 1e-4:
            break
        lo, hi = (mid, hi) if r > target else (lo, mid)
    if best is None:
        raise ValueError(f"{model_name}: no Torch-Pruning ratio in {len(attempts)} attempt(s) left every "
                         f"layer a head and a unit (max_iters={max_iters})")
    ratio, mr, fv, sd = best
    split = None
    if abs(mr / target - 1) > tol and not global_pruning and not vit and hi - lo < 1e-3:
        layers = _prunable_layers(dense_t)
        found = _split(lambda k: attempt(lo, dict.fromkeys(layers[:k], hi)), len(layers), target, tol)
        if found is not None and abs(found[1] / target - 1) < abs(mr / target - 1):
            k, mr, fv, sd, tried = found
            ratio, split = lo, {"ratio": float(hi), "layers": layers[:k], "attempts": tried}
    return {"variables": fv, "pruning_ratio": float(ratio), "macs_ratio": float(mr),
            "attempts": [(float(a), None if b is None else float(b)) for a, b in attempts],
            "within_tol": bool(abs(mr / target - 1) <= tol),
            "scale_dim": None if sd is None else int(sd), "split": split}


def _prunable_layers(model) -> list[str]:
    """Paths of the convolutions and linear layers of a torch CNN in network order, the
    classifier excluded: the layers a split ratio is handed out to."""
    from torch import nn

    head = _classifier(model)
    return [path for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not head]


def _split(attempt, n: int, target: float, tol: float):
    """Bisection on ``k`` in [0, n] for ``attempt(k)`` -> (macs_ratio, variables, scale_dim)
    within ``tol`` of ``target`` (kept MACs fall as ``k`` grows). Returns (k, macs_ratio,
    variables, scale_dim, [(k, macs_ratio), ...]) of the closest attempt, or None when
    every attempt emptied a layer."""
    lo, hi, tried, best = 0, n, [], None
    while lo <= hi:
        k = (lo + hi) // 2
        r, v, sd = attempt(k)
        tried.append((k, None if r is None else float(r)))
        if r is None:
            hi = k - 1
            continue
        if best is None or abs(r / target - 1) < abs(best[1] / target - 1):
            best = (k, float(r), v, sd)
        if abs(r / target - 1) <= tol / 2:
            break
        lo, hi = (k + 1, hi) if r > target else (lo, k - 1)
    return None if best is None else (*best, tried)


def prune_in_subprocess(model_name: str, variables: Mapping, target: float, kind: str, global_pruning: bool,
                        input_shape: tuple[int, ...], calib_images: np.ndarray | None = None,
                        calib_labels: np.ndarray | None = None, tol: float = 0.01) -> tuple[Any, dict, dict]:
    """:func:`prune` in a spawned process (the caller never imports torch, so its JAX
    timings are not disturbed), the result rebuilt as a Flax module:
    ``(model, variables, {'pruning_ratio', 'attempts', 'within_tol', 'split'})``."""
    import multiprocessing
    from concurrent import futures

    from hobs_jax import models

    with futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = pool.submit(prune, model_name, variables, target, kind, global_pruning, input_shape,
                          calib_images, calib_labels, tol).result()
    widths, nc, ic = models.infer_widths(model_name, out["variables"])
    # A ViT keeps the softmax temperature torch_to_flax read off the pruned torch model.
    kw = {} if out.get("scale_dim") is None else {"scale_dim": out["scale_dim"]}
    pruned = models.build(model_name, widths=widths, num_classes=nc, in_channels=ic, **kw)
    return pruned, out["variables"], {k: out[k] for k in ("pruning_ratio", "attempts", "within_tol", "split")}
