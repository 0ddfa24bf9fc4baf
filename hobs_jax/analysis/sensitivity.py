"""Per-group pruning sensitivity: layer-wise reconstruction curves, empirical Fisher
traces, and the layer-by-layer feature-map error of a pruned network (Fig. 1).

    python -m hobs_jax.analysis.sensitivity --checkpoint checkpoints/resnet20_fmnist \
        --out docs/results/sensitivity/resnet20_fmnist --calib 1024

writes ``sensitivity.json`` and three figures into ``--out``:

* ``curves.png`` - per prunable group with consumers, the relative reconstruction error
  of its consumers ``sum_l ||X_l W_l - X_l W'_l||^2 / n_l / sum_l ||X_l W_l||^2 / n_l``
  (n_l: output positions of consumer l; computed
  from the Gram ``X^T X`` of the calibration pass, no extra pass) at keep ratios 1.0,
  0.9, ..., 0.1, for three ways of removing channels: H-OBS (its greedy OBS selection,
  BN-weighted as in the ``hobs`` method, then OBS compensation of the kept rows), the
  same channels without compensation, and the smallest group-L2 channels without
  compensation. At keep 1.0 every curve is exactly 0 (not drawn on the log axis).
* ``fisher.png`` - the empirical Fisher trace per group, ``(1/N) sum_n ||d loss_n /
  d theta_g||^2`` over every parameter slice of the group's members (per-example
  gradients of the cross-entropy, eval-mode BatchNorm), total and per parameter: a
  cross-layer sensitivity from the loss rather than from one layer's reconstruction.
* ``feature_error.png`` (Fig. 1) - for a network pruned to ``--target`` of the MACs, the
  relative error of every layer's output (on the output channels the pruned network
  keeps) against the dense network's, layer by layer in forward order, for H-OBS, H-OBS
  without compensation, and magnitude (uniform allocation for all three, so only the
  channel choice and the compensation differ; no BN re-estimation). Computed on the
  masked full-size network, which equals the pruned one (docs/graph.md, Sec. 7).

Why ``hobs <= hobs_nocomp`` at every ratio, exactly: for removed rows S the compensated
weights minimize ``dW^T (H + D) dW`` subject to ``dW_S = W_S`` (D >= 0 the diagonal
dampening), so ``f(dW*) + dW*^T D dW* <= f(dW0) + dW0^T D dW0`` with ``f(dW) = dW^T H dW``
and ``dW0`` the plain zeroing; ``dW*`` equals ``dW0`` on S and only adds rows, so its
D-term is no smaller and ``f(dW*) <= f(dW0)``. With ``damp = 0`` (and no dead inputs)
the compensated curve is also exactly nondecreasing as channels are removed along the
greedy path (a nested constrained least squares); with dampening it is so up to
rounding of order ``damp``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax import obs
from hobs_jax.graph import Graph, group_l2_scores, layout_channels, layout_indices, mask_variables
from hobs_jax.methods import group_roles
from hobs_jax.obs import HessianStats, SolvedLayers, blas_threads, check_images, compensate
from hobs_jax.stats.layers import capture_outputs, trace_layers

log = logging.getLogger(__name__)

RATIOS = tuple(round(1.0 - 0.1 * i, 1) for i in range(10))
CURVES = ("hobs", "hobs_nocomp", "magnitude")
SCHEMA_VERSION = 1


def _bar(iterable, *, total=None, desc="", unit="group", enabled=True):
    from hobs_jax.train import progress

    return progress(iterable, total=total, desc=desc, unit=unit, enabled=enabled)


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """One-line ``ValueError`` unless ``ratios`` is a non-empty sequence in (0, 1]."""
    r = tuple(float(x) for x in ratios)
    if not r or not all(0.0 < x <= 1.0 for x in r):
        raise ValueError(f"keep ratios must be a non-empty list of values in (0, 1], got {list(ratios)}")
    return r


def reconstruction_curves(graph: Graph, variables: Mapping, stats: HessianStats, infos, *,
                          ratios: Sequence[float] = RATIOS, damp: float = 0.01, bn_weighted: bool = True,
                          progress: bool = False) -> dict[int, dict]:
    """Relative consumer reconstruction error of every group that has consumers.

    For group g with consumers l (kernel ``W_l`` [d_l, m_l] in im2col row order, input
    Gram ``G_l = X_l^T X_l`` as ``H_l = (2/n) G_l``) and kept count ``k = round(r * size)``
    (at least 1) per ratio r, the removed channels S_r give rows Q_l(S_r) of each consumer
    and the error ``sum_l tr(dW_l^T H_l dW_l) / sum_l tr(W_l^T H_l W_l)``, with ``dW_l``:

    * ``hobs``: S_r = the first ``size - k`` channels of H-OBS's greedy path (OBS saliency
      summed over consumers, Schur downdates; per-output BN weights when ``bn_weighted``,
      as the ``hobs`` method's default), ``W'`` = the OBS compensation with the dampened
      H (:func:`~hobs_jax.obs.compensate`), ``dW = W - W'``;
    * ``hobs_nocomp``: the same S_r, rows zeroed, nothing else changed;
    * ``magnitude``: S_r = the ``size - k`` smallest group-L2 channels, rows zeroed.

    The error is measured with the undampened H (LayerNorm-normalized groups, which
    ``hobs`` does not compensate, give ``hobs == hobs_nocomp``). Because ``H_l`` is
    normalized by the number n_l of input rows of layer l, each consumer's squared
    output error counts *per output position* (a stride-2 consumer is not down-weighted
    for having 4x fewer positions), as in the H-OBS loss that the selection minimizes.

    Args:
      graph, variables: the network's channel graph and variables.
      stats: Hessian statistics of (at least) every consumer layer.
      infos: :func:`~hobs_jax.stats.layers.trace_layers` of the network.
      ratios: keep ratios in (0, 1].
      damp: relative dampening of the inverses (as ``hobs``'s ``damp``).
    Returns:
      group id -> {"consumers": [names], "keep": [len(ratios)] kept counts, "compensated":
      bool, "hobs"/"hobs_nocomp"/"magnitude": [len(ratios)] relative errors}.
    """
    ratios = check_ratios(ratios)
    flat = {k: np.asarray(v) for k, v in obs.flat_variables(variables).items()}
    l2 = group_l2_scores(graph, variables)
    roles = {g: r for g, r in group_roles(graph, infos).items() if r.consumers}
    solved = SolvedLayers(stats, damp)
    out = {}
    for gid, role in _bar(roles.items(), total=len(roles), desc="reconstruction curves", enabled=progress):
        size = role.size
        keeps = [max(1, int(round(r * size))) for r in ratios]
        sites = [(site, obs.layer_weights(flat, site.layer, site.layer.use_bias),
                  obs.channel_rows(site.channel, size, site.layer.name)) for site in role.consumers]
        n_max = size - min(keeps)
        # H-OBS's selection (the engine's, as the hobs method runs it; BN-weighted when asked).
        order = obs.select(role, n_max, flat, solved, bn_weighted=bn_weighted)[0]
        mag_order = np.argsort(l2[gid], kind="stable")
        ref = sum(float(np.sum(w * (solved(s.layer)[0] @ w))) for s, w, _ in sites)
        curves = {k: [] for k in CURVES}
        for k in keeps:
            n_rm = size - k
            for name, rm in (("hobs", order[:n_rm]), ("hobs_nocomp", order[:n_rm]),
                             ("magnitude", mag_order[:n_rm])):
                err = 0.0
                for site, w, rows in sites:
                    h, hd = solved(site.layer)[:2]
                    removed = rows[np.asarray(rm, np.int64)].reshape(-1)
                    if not len(removed):
                        continue
                    if name == "hobs" and role.compensate:
                        new = compensate(w, hd, removed, name=site.layer.name)
                    else:
                        new = w.copy()
                        new[removed] = 0.0
                    dw = w - new
                    err += float(np.sum(dw * (h @ dw)))
                curves[name].append(err / ref if ref > 0 else 0.0)
        out[gid] = {"consumers": [s.layer.name for s, _, _ in sites], "keep": keeps,
                    "compensated": role.compensate, **curves}
    return out


def fisher_traces(model, variables: Mapping, graph: Graph, images: np.ndarray, labels: np.ndarray, *,
                  batch_size: int = 32, progress: bool = False) -> dict[int, dict]:
    """Empirical Fisher trace per group.

    ``F_g = (1/N) sum_n sum_{theta in g} (d CE(f(x_n), y_n) / d theta)^2`` over every
    parameter slice (kernels on input and output axes, BN scale/shift, biases) of group g's
    channels: the trace of the empirical Fisher restricted to the group, from per-example
    gradients in eval mode (BN running statistics).

    Args:
      model, variables: the network; graph: its channel graph.
      images: [N, H, W, C] float32; labels: [N] int.
      batch_size: examples per vmapped gradient step (the last batch is padded and masked).
    Returns:
      group id (prunable groups) -> {"trace": F_g, "per_channel": [size] the per-channel
      sums, "per_param": F_g / number of parameters of the group, "params": that number}.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be [N] integers matching {len(images)} images, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(p, x, y):
        logits = model.apply({"params": p, **rest}, x[None], train=False)[0]
        return -jax.nn.log_softmax(logits.astype(jnp.float32))[y]

    @jax.jit
    def sq_grads(p, x, y, w):
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)
        return jax.tree.map(lambda a: jnp.einsum("n,n...->...", w, a * a), g)

    n = len(images)
    bs = min(int(batch_size), n)
    acc = None
    nb = -(-n // bs)
    for i in _bar(range(nb), total=nb, desc="fisher", unit="batch", enabled=progress):
        x, y = images[i * bs:(i + 1) * bs], labels[i * bs:(i + 1) * bs]
        w = np.ones(bs, np.float32)
        if len(x) < bs:
            w[len(x):] = 0
            x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(bs - len(y), y.dtype)])
        s = jax.device_get(sq_grads(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)))
        s = jax.tree.map(lambda a: np.asarray(a, np.float64), s)
        acc = s if acc is None else jax.tree.map(np.add, acc, s)
    if not all(np.all(np.isfinite(a)) for a in jax.tree.leaves(acc)):
        raise ValueError("per-example gradients have NaN/Inf values (weights or images not finite?)")
    # group_l2_scores sums squares per channel: feed it sqrt(F_diag) to sum F_diag.
    per_channel = group_l2_scores(graph, {"params": jax.tree.map(lambda a: np.sqrt(a / n), acc)})
    flat = {k: np.asarray(v) for k, v in obs.flat_variables(variables).items()}
    out = {}
    for g in graph.prunable:
        nparam = 0
        for m in g.members:
            va = graph.axis(m.collection, m.path, m.axis)
            if m.collection == "params" and va is not None:
                n_pos = int(np.count_nonzero(layout_channels(va.layout, g.id) >= 0))
                nparam += int(np.prod(flat[("params",) + m.path].shape)) // m.size * n_pos
        fc = per_channel[g.id] ** 2
        out[g.id] = {"trace": float(fc.sum()), "per_channel": fc.tolist(),
                     "per_param": float(fc.sum()) / max(1, nparam), "params": nparam}
    return out


def feature_errors(model, variables: Mapping, graph: Graph, plans: Mapping[str, tuple], x: np.ndarray,
                   infos) -> dict:
    """Relative error of every layer output of each masked pruned network against the
    dense network, on the output channels that network keeps.

    Args:
      plans: name -> (PrunePlan, full-size variables to mask with it).
      x: [B, H, W, C] images.
    Returns:
      {"layers": [L] layer names in forward order, name: [L] errors
      ``||Y_dense[..., kept] - Y_pruned[..., kept]||^2 / ||Y_dense[..., kept]||^2``}.
    """
    fwd = jax.jit(lambda v, x: capture_outputs(model, v, x))
    _, dense = fwd(variables, jnp.asarray(x))
    layers = sorted(infos, key=lambda p: infos[p].order)
    out = {"layers": ["/".join(p) for p in layers]}
    for name, (plan, pv) in plans.items():
        masked = mask_variables(graph, pv, plan)
        _, pruned = fwd(masked, jnp.asarray(x))
        keep = {g: np.asarray(idx) for g, idx in plan.keep}
        errs = []
        for p in layers:
            info = infos[p]
            a, b = np.asarray(dense[p], np.float64), np.asarray(pruned[p], np.float64)
            if len(info.out_axes) == 1:  # kept output positions (row-major along the axis)
                va = graph.axis("params", p + ("kernel",), info.out_axes[0])
                if va is not None:
                    pos = layout_indices(va.layout, keep)
                    a, b = a[..., pos], b[..., pos]
            errs.append(float(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-30)))
        out[name] = errs
    return out


def analyze(model, variables: Mapping | None, images: np.ndarray, labels: np.ndarray, *,
            target: float = 0.5, batch_size: int = 256, fisher_examples: int = 256,
            feature_examples: int = 128, ratios: Sequence[float] = RATIOS, damp: float = 0.01,
            progress: bool = True) -> dict:
    """Everything ``sensitivity.json`` holds (see module docstring).

    Args:
      model, variables: any network: a zoo name or module with its variables, a user's
        linen module with its variables, an NNX module or a
        :class:`~hobs_jax.models.Prunable` (``variables`` None: its own).
      images: [N, H, W, C] float32 calibration images; labels: [N] int.
      target: kept MACs fraction of the Fig. 1 networks, in (0, 1).
      batch_size: calibration batch; fisher_examples / feature_examples: the first that
        many images feed the Fisher traces / Fig. 1.
    Returns:
      {"schema": 1, "model", "calibration_images", "ratios", "damp", "groups": [per
      prunable group: id, size, kind, widths, fisher_trace, fisher_per_param,
      fisher_params (+ consumers, keep, compensated, hobs, hobs_nocomp, magnitude when it
      has consumers)], "feature_error": {target, macs_ratio, layers, hobs, hobs_nocomp,
      magnitude}, "timings": seconds per phase}.
    """
    from hobs_jax.graph import as_prunable, graph_of
    from hobs_jax.methods import Calibration, prune

    if isinstance(target, bool) or not 0.0 < float(target) < 1.0:
        raise ValueError(f"target={target!r}: the kept MACs fraction must be in (0, 1)")
    ratios = check_ratios(ratios)
    for key, val in (("batch_size", batch_size), ("fisher_examples", fisher_examples),
                     ("feature_examples", feature_examples)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{key}={val!r} must be a positive int")
    input_shape = (1,) + tuple(np.shape(images)[1:])
    images = check_images(images, input_shape)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels have shape {labels.shape}, expected ({len(images)},)")
    p = as_prunable(model, variables, input_shape)
    model, variables = p.module, p.variables
    times = {}
    t0 = time.perf_counter()
    graph = graph_of(p)
    infos = trace_layers(model, variables, input_shape)
    need = sorted({s.layer.path for r in group_roles(graph, infos).values() for s in r.consumers})
    stats = obs.layer_hessians(model, variables, images, paths=need, batch_size=batch_size, progress=progress,
                             infos=infos)
    times["calibration"] = time.perf_counter() - t0
    log.info("hessians of %d layers over %d images: %.1f s", len(need), len(images), times["calibration"])
    t0 = time.perf_counter()
    with blas_threads(1):
        curves = reconstruction_curves(graph, variables, stats, infos, ratios=ratios, damp=damp,
                                       progress=progress)
    times["curves"] = time.perf_counter() - t0
    log.info("reconstruction curves of %d groups: %.1f s", len(curves), times["curves"])
    t0 = time.perf_counter()
    fisher = fisher_traces(model, variables, graph, images[:fisher_examples], labels[:fisher_examples],
                           progress=progress)
    times["fisher"] = time.perf_counter() - t0
    log.info("Fisher traces over %d examples: %.1f s", min(fisher_examples, len(images)), times["fisher"])
    t0 = time.perf_counter()
    calib = Calibration(images, labels)
    opts = dict(allocation="uniform", damp=damp, progress=progress, calib_batch_size=batch_size)
    hobs = prune("hobs", p, target=target, calib=calib, options=opts)
    mag = prune("magnitude", p, target=target, options=dict(allocation="uniform"), input_shape=input_shape)
    plans = {"hobs": (hobs.outcome.plan, hobs.outcome.variables),
             "hobs_nocomp": (hobs.outcome.plan, variables),
             "magnitude": (mag.outcome.plan, variables)}
    feats = feature_errors(model, variables, graph, plans, images[:feature_examples], infos)
    times["feature_error"] = time.perf_counter() - t0
    log.info("Fig. 1 feature errors (H-OBS prune + 3 forward passes): %.1f s", times["feature_error"])
    groups = []
    for g in graph.prunable:
        entry = {"id": g.id, "size": g.size, "kind": g.kind, "widths": list(g.widths),
                 "fisher_trace": fisher[g.id]["trace"], "fisher_per_param": fisher[g.id]["per_param"],
                 "fisher_params": fisher[g.id]["params"]}
        if g.id in curves:
            entry.update({k: curves[g.id][k] for k in ("consumers", "keep", "compensated") + CURVES})
        groups.append(entry)
    return {"schema": SCHEMA_VERSION, "model": p.label, "calibration_images": int(len(images)),
            "input_shape": list(input_shape[1:]), "ratios": list(ratios), "damp": damp,
            "fisher_examples": int(min(fisher_examples, len(images))), "groups": groups,
            "feature_error": {"target": target, "macs_ratio": hobs.macs_ratio,
                              "examples": int(min(feature_examples, len(images))), **feats},
            "timings": {k: round(v, 2) for k, v in times.items()}}


def _group_label(g: dict) -> str:
    w = (g.get("widths") or ["-"])[0]
    return f"g{g['id']} {w}"


def plot(result: dict, out_dir: str) -> list[str]:
    """Write curves.png, fisher.png and feature_error.png from :func:`analyze`'s result;
    returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    styles = {"hobs": ("H-OBS (greedy OBS channels + compensation)", "C0", "-"),
              "hobs_nocomp": ("same channels, no compensation", "C1", "--"),
              "magnitude": ("smallest group L2, no compensation", "C2", ":")}
    floor = 1e-8  # exact zeros (nothing removed / untouched layers) on a log axis

    groups = [g for g in result["groups"] if "hobs" in g]
    ratios = np.asarray(result["ratios"])
    drawn = ratios < 1.0  # every curve is exactly 0 at keep 1.0
    if groups:
        cols = min(6, len(groups))
        rows = -(-len(groups) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 2.0 * rows + 1.0), sharex=True,
                                 sharey=True, squeeze=False)
        for ax, g in zip(axes.flat, groups):
            for k, (label, color, ls) in styles.items():
                ax.plot(ratios[drawn], np.maximum(np.asarray(g[k])[drawn], floor), ls, color=color,
                        label=label, lw=1.5, marker="o", ms=2)
            ax.set_yscale("log")
            ax.set_title(f"{_group_label(g)} ({g['kind']}, {g['size']} ch, {len(g['consumers'])} cons.)",
                         fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3, which="both", lw=0.4)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("keep ratio", fontsize=7)
        for ax in axes[:, 0]:
            ax.set_ylabel("rel. recon. error", fontsize=7)
        axes[0, 0].invert_xaxis()  # shared x: once; pruning more to the right
        h, lab = axes.flat[0].get_legend_handles_labels()
        fig.suptitle(f"{result['model']}: relative reconstruction error of each group's consumers, "
                     f"log scale ({result['calibration_images']} calibration images; 0 at keep 1.0)",
                     fontsize=9)
        fig.legend(h, lab, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()),
                   ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
        paths.append(os.path.join(out_dir, "curves.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    allg = result["groups"]
    x = np.arange(len(allg))
    colors = ["C3" if g["kind"] == "residual" else "C0" for g in allg]
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.22 * len(allg) + 2), 5.8), sharex=True)
    axes[0].bar(x, [g["fisher_trace"] for g in allg], color=colors)
    axes[0].set_ylabel("trace (sum over group)", fontsize=8)
    axes[1].bar(x, [g["fisher_per_param"] for g in allg], color=colors)
    axes[1].set_ylabel("trace / parameter", fontsize=8)
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y", which="both", lw=0.4)
        ax.tick_params(labelsize=7)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([_group_label(g) for g in allg], rotation=90, fontsize=6)
    axes[0].set_title(f"{result['model']}: empirical Fisher trace per group, log scale\n"
                      f"({result.get('fisher_examples', '?')} examples; red: residual streams)", fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "fisher.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fe = result["feature_error"]
    n = len(fe["layers"])
    fig, ax = plt.subplots(figsize=(max(7.0, 0.14 * n + 2), 4.0))
    zero = np.all([np.asarray(fe[k]) == 0 for k in styles], axis=0)  # e.g. the stem: input unpruned
    for k, (label, color, ls) in styles.items():
        y = np.where(zero, np.nan, np.asarray(fe[k], np.float64))
        ax.plot(np.maximum(y, floor), ls, marker="o", ms=2.5, color=color, label=label, lw=1.3)
    ax.set_yscale("log")
    ax.set_xlabel("layer (forward order)", fontsize=8)
    ax.set_ylabel("relative feature-map error", fontsize=8)
    step = max(1, n // 30)
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels([fe["layers"][i] for i in range(0, n, step)], rotation=60, ha="right", fontsize=6)
    skipped = [fe["layers"][i] for i in np.flatnonzero(zero)]
    ax.set_title(f"{result['model']} pruned to {fe['macs_ratio']:.2f} of the MACs (uniform, no BN re-estimation):\n"
                 f"error of each layer's output vs the dense network, log scale"
                 + (f" (exactly 0, not drawn: {', '.join(skipped[:3])})" if skipped else ""), fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "feature_error.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hobs_jax.analysis.sensitivity",
                                description="Per-group pruning sensitivity of a saved model (JSON + PNGs).")
    p.add_argument("--checkpoint", default="", help="directory written by hobs_jax.export.save")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--calib", type=int, default=1024, help="calibration images (training split)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--resize", type=int, default=0, help="resize images to this square size (0: as stored)")
    p.add_argument("--target", type=float, default=0.5, help="kept MACs fraction of the Fig. 1 networks")
    p.add_argument("--fisher-examples", type=int, default=256)
    p.add_argument("--feature-examples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the PNGs from an existing <out>/sensitivity.json (no computation)")
    return p


def run(a: argparse.Namespace) -> list[str]:
    """The CLI's work: load, sample calibration images, analyze, write JSON + PNGs."""
    import hobs_jax
    from hobs_jax.data import get_source

    if a.plot_only:
        path = os.path.join(a.out, "sensitivity.json")
        if not os.path.isfile(path):
            raise ValueError(f"--plot-only: no {path}")
        with open(path) as f:
            return [path] + plot(json.load(f), a.out)
    for key in ("calib", "fisher_examples", "feature_examples", "batch_size"):
        if getattr(a, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(a, key)} must be >= 1")
    if not a.checkpoint:
        raise ValueError("--checkpoint is required (a directory written by hobs_jax.export.save)")
    if not 0.0 < a.target < 1.0:
        raise ValueError(f"--target={a.target} must be in (0, 1)")
    if a.resize < 0:
        raise ValueError(f"--resize={a.resize} must be >= 0")
    if not a.damp >= 0:
        raise ValueError(f"--damp={a.damp} must be >= 0")
    model, variables, meta = hobs_jax.load(a.checkpoint)
    kw = {}
    if a.resize:
        kw["resize_to"] = (a.resize, a.resize)
    if meta.get("in_channels", 1) != 1:
        kw["channels"] = meta["in_channels"]
    try:
        src = get_source(a.dataset, **kw)
    except KeyError as e:  # unknown source name
        raise ValueError(e.args[0] if e.args else str(e)) from None
    n = min(a.calib, src.size("train"))
    idx = np.sort(np.random.default_rng(a.seed).permutation(src.size("train"))[:n])
    images, labels = src.batch("train", idx, train=False)
    result = analyze(model, variables, np.asarray(images, np.float32), np.asarray(labels),
                     target=a.target, batch_size=a.batch_size, fisher_examples=a.fisher_examples,
                     feature_examples=a.feature_examples, damp=a.damp, progress=not a.no_progress)
    result["checkpoint"] = os.path.relpath(a.checkpoint) if not os.path.isabs(a.checkpoint) else a.checkpoint
    result["dataset"] = a.dataset
    result["seed"] = a.seed
    result["command"] = "python -m hobs_jax.analysis.sensitivity " + " ".join(shlex.quote(s) for s in a.argv)
    result["device"] = f"{jax.devices()[0].platform} ({os.cpu_count()} cores)"
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "sensitivity.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return [path] + plot(result, a.out)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    a.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        paths = run(a)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        raise SystemExit(2) from None
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
