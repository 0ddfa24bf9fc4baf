"""Static per-group state features for the R-SPAR environment.

AMC's layer features (He et al., ECCV 2018: index, type, channels, kernel, stride, FLOPs,
params) adapted to channel *groups* (a group may span several layers: a ResNet stream is
produced by every block and read by every block), plus the group's H-OBS sensitivity:
the cumulative OBS loss of its greedy removal path when it keeps 75%, 50% and 25% of its
channels (the path H-OBS's selection already computed; a sensitivity curve for free;
under another scorer, the cumulative losses along that scorer's removal order).
Every column is scaled to [0, 1] by its maximum over groups (losses on a log scale).
"""

from __future__ import annotations

import numpy as np

COLUMNS = ("consumers", "conv_consumer", "in_channels", "out_channels", "consumer_width", "kernel",
           "stride", "macs", "params", "sens75", "sens50", "sens25")
SENS_POINTS = (0.75, 0.5, 0.25)


def _share(coef: np.ndarray, exp: np.ndarray, full: np.ndarray) -> np.ndarray:
    """[G] fraction of the total cost in layers whose cost depends on each group."""
    per_layer = coef * np.prod(np.power(full[None, :], exp), axis=1)
    return np.array([per_layer[exp[:, g] > 0].sum() for g in range(exp.shape[1])]) / per_layer.sum()


def path_loss_at(size: int, losses: np.ndarray, ratio: float) -> float:
    """Cumulative greedy-path OBS loss when ``ratio`` of ``size`` channels are kept
    (the path's end when it stopped earlier)."""
    n = min(len(losses), int(round((1.0 - ratio) * size)))
    return float(np.sum(losses[:n]))


def group_features(sel) -> np.ndarray:
    """[G, len(COLUMNS)] float32 features of ``sel.cost.group_ids`` (module doc) from a
    :class:`hobs_jax.methods.Selection`: its channel groups (how each meets the layers)
    and its scorer's removal losses."""
    cost = sel.cost
    groups = sel.channel_groups()
    rows = []
    for gid in cost.group_ids:
        role = groups[gid]
        cons = role.consumers[0].layer if role.consumers else None
        prod = role.producers[0].layer if role.producers else None
        kernel = float(np.prod(cons.kernel_shape[:2])) if cons is not None and cons.kind != "dense" else 1.0
        stride = float(prod.strides[0]) if prod is not None and prod.strides else 1.0
        in_ch = float(prod.kernel_shape[-2]) if prod is not None and len(prod.kernel_shape) >= 2 else 0.0
        width = float(cons.kernel_shape[-1]) if cons is not None else 0.0
        losses = sel.scores.losses[gid]
        sens = [path_loss_at(role.size, losses, r) for r in SENS_POINTS]
        rows.append([len(role.consumers), float(cons is not None and cons.kind == "conv"), in_ch,
                     float(role.size), width, kernel, stride, 0.0, 0.0] + sens)
    f = np.asarray(rows, np.float64)
    f[:, 7] = _share(cost.macs_coef, cost.macs_exp, cost.full)
    f[:, 8] = _share(cost.params_coef, cost.params_exp, cost.full)
    sens = f[:, 9:]
    pos = sens[sens > 0]
    scale = float(np.median(pos)) if len(pos) else 1.0
    f[:, 9:] = np.log1p(np.maximum(sens, 0.0) / scale)
    top = f.max(axis=0)
    f = np.where(top > 0, f / np.where(top > 0, top, 1.0), 0.0)
    return f.astype(np.float32)
