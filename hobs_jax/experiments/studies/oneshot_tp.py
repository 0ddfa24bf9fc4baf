"""The Torch-Pruning side of ``benchmarks/oneshot_fmnist.py``: the peer's own pruners on
the same dense checkpoint, at the same MACs target. Runs in a spawned subprocess (the
main process never imports torch, so JAX timings are not disturbed).

The dense Flax variables are converted to PyTorch (``parity.convert.flax_to_torch``),
pruned by Torch-Pruning 1.6.1 with one of

    l1        MagnitudePruner + MagnitudeImportance(p=1)        (TP benchmark "l1")
    groupnorm GroupNormPruner + GroupMagnitudeImportance(p=2)   (TP "group_norm"; no sparse training)
    bnscale   MagnitudePruner + BNScaleImportance()              (TP "slim" criterion, no training)
    taylor    MagnitudePruner + TaylorImportance()               (gradients of the CE loss on
                                                                  the calibration images)

(``ignored_layers=[fc]``, ``global_pruning`` True/False), and converted back with
``parity.convert.torch_to_flax``. TP's ``pruning_ratio`` is a channel ratio, not a MACs
ratio, so it is found by bisection until OUR analytic MACs count of the converted model
is within ``tol`` of the target (a step function: when no ratio lands inside, the
closest attempt is returned and the caller refuses the row).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

KINDS = ("l1", "groupnorm", "bnscale", "taylor")


def _pruner(kind: str, model, example, ratio: float, global_pruning: bool):
    import torch_pruning as tp

    if kind == "l1":
        cls, imp = tp.pruner.MagnitudePruner, tp.importance.MagnitudeImportance(p=1)
    elif kind == "groupnorm":
        cls, imp = tp.pruner.GroupNormPruner, tp.importance.GroupMagnitudeImportance(p=2)
    elif kind == "bnscale":
        cls, imp = tp.pruner.MagnitudePruner, tp.importance.BNScaleImportance()
    elif kind == "taylor":
        cls, imp = tp.pruner.MagnitudePruner, tp.importance.TaylorImportance()
    else:
        raise ValueError(f"unknown Torch-Pruning criterion {kind!r}; use one of {KINDS}")
    return cls(model, example, importance=imp, pruning_ratio=ratio, global_pruning=global_pruning,
               ignored_layers=[model.fc])


def prune(model_name: str, variables: Mapping, target: float, kind: str, global_pruning: bool,
          input_shape: tuple[int, ...], calib_images: np.ndarray | None = None,
          calib_labels: np.ndarray | None = None, tol: float = 0.01, max_iters: int = 40) -> dict:
    """Bisection on TP's ``pruning_ratio`` for ``target`` kept MACs (our counter).

    Returns {'variables': Flax numpy variables of the pruned model, 'pruning_ratio',
    'macs_ratio', 'attempts': [(ratio, macs_ratio), ...], 'within_tol': bool}.
    """
    if kind == "taylor" and (calib_images is None or calib_labels is None):
        raise ValueError("the Taylor criterion needs calib_images and calib_labels")
    import torch

    from hobs_jax import macs, models
    from parity.convert import flax_to_torch, torch_to_flax

    torch.manual_seed(0)
    torch.set_num_threads(2)
    dense_t = flax_to_torch(model_name, variables).float().eval()
    widths, nc, ic = models.infer_widths(model_name, variables)
    dense_f = models.build(model_name, widths=widths, num_classes=nc, in_channels=ic)
    shape = (1,) + tuple(input_shape[1:])
    base = macs.count(dense_f, variables, shape).macs
    example = torch.zeros(1, shape[3], shape[1], shape[2])

    def attempt(ratio: float):
        m = copy.deepcopy(dense_t)
        pruner = _pruner(kind, m, example, ratio, global_pruning)
        if kind == "taylor":
            assert calib_images is not None and calib_labels is not None  # checked on entry
            m.zero_grad()
            x = torch.from_numpy(np.ascontiguousarray(calib_images.transpose(0, 3, 1, 2)))
            y = torch.from_numpy(calib_labels.astype(np.int64))
            for i in range(0, len(x), 256):
                loss = torch.nn.functional.cross_entropy(m(x[i:i + 256]), y[i:i + 256],
                                                         reduction="sum") / len(x)
                loss.backward()
        pruner.step()
        fm, fv = torch_to_flax(model_name, m)
        return macs.count(fm, fv, shape).macs / base, fv

    lo, hi = 0.0, 0.95  # MACs kept fall as the channel ratio grows
    attempts: list[tuple[float, float]] = []
    best: tuple[float, float, Any] | None = None
    for _ in range(max_iters):
        mid = (lo + hi) / 2
        r, v = attempt(mid)
        attempts.append((mid, r))
        if best is None or abs(r / target - 1) < abs(best[1] / target - 1):
            best = (mid, r, v)
        if abs(r / target - 1) <= tol / 2 or hi - lo < 1e-4:
            break
        lo, hi = (mid, hi) if r > target else (lo, mid)
    if best is None:
        raise ValueError(f"max_iters={max_iters}: the bisection needs at least one attempt")
    ratio, mr, fv = best
    return {"variables": fv, "pruning_ratio": float(ratio), "macs_ratio": float(mr),
            "attempts": [(float(a), float(b)) for a, b in attempts],
            "within_tol": bool(abs(mr / target - 1) <= tol)}
