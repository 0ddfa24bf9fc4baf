"""Per-group pruning sensitivity: layer-wise reconstruction curves, empirical Fisher
traces, and the layer-by-layer feature-map error of a pruned network (Fig. 1).

    python -m hobs_jax.analysis.sensitivity --checkpoint runs/resnet20_fmnist/train/model \
        --out runs/resnet20_fmnist/sensitivity --calib 1024

writes ``sensitivity.json`` and three figures into ``--out``:

* ``curves.png`` - per prunable group, the relative reconstruction error of its consumers
  ``sum_l ||X_l W_l - X_l W'_l||^2 / sum_l ||X_l W_l||^2`` (from the Gram ``X^T X``, no
  extra pass) at keep ratios 1.0, 0.9, ..., 0.1, for three ways of removing channels:
  H-OBS (greedy OBS selection + compensation), the same channels without compensation,
  and the smallest group-L2 channels without compensation.
* ``fisher.png`` - the empirical Fisher trace per group, ``(1/N) sum_n ||d loss_n /
  d theta_g||^2`` over the parameters of the group's members (per-example gradients,
  eval-mode BatchNorm), total and per parameter: a cross-layer sensitivity from the loss.
* ``feature_error.png`` (Fig. 1) - for a network pruned to ``--target`` of the MACs, the
  relative error of every layer's output (the channels the pruned network keeps) against
  the dense network's, layer by layer in forward order, for H-OBS, H-OBS without
  compensation, and magnitude (uniform allocation for all three, so only the channel
  choice and the compensation differ). Computed on the masked full-size network, which
  equals the pruned one (docs/graph.md, Sec. 7).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.graph import Graph, build_graph, group_l2_scores, layout_channels, layout_indices, mask_variables
from hobs_jax.methods.obs_groups import group_roles
from hobs_jax.methods.obs_math import Consumer, blas_threads, channel_rows, compensate, greedy_path, robust_inverse
from hobs_jax.stats.hessian import HessianStats, check_images, collect_hessians
from hobs_jax.stats.layers import capture_outputs, kernel_matrix, trace_layers

log = logging.getLogger(__name__)

RATIOS = tuple(round(1.0 - 0.1 * i, 1) for i in range(10))
CURVES = ("hobs", "hobs_nocomp", "magnitude")


def _flat(variables) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(str(getattr(k, "key", k)) for k in p): np.asarray(leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _weights(flat, info) -> np.ndarray:
    w = kernel_matrix(info, flat[("params",) + info.path + ("kernel",)]).astype(np.float64)
    if info.use_bias:
        w = np.concatenate([w, flat[("params",) + info.path + ("bias",)].astype(np.float64).reshape(1, -1)])
    return w


def reconstruction_curves(graph: Graph, variables: Mapping, stats: HessianStats, infos, *,
                          ratios: Sequence[float] = RATIOS, damp: float = 0.01) -> dict[int, dict]:
    """Per group with consumers: relative consumer reconstruction errors at ``ratios``
    (keys of :data:`CURVES`), the consumers' names and the kept counts."""
    flat = _flat(variables)
    l2 = group_l2_scores(graph, variables)
    out = {}
    cache = {}
    for gid, role in group_roles(graph, infos).items():
        if not role.consumers:
            continue
        size = role.group.size
        keeps = [max(1, int(round(r * size))) for r in ratios]
        sites = []
        for site in role.consumers:
            info = site.layer
            if info.path not in cache:
                h = stats[info.path].hessian(bias=info.use_bias)
                hd, hinv, _, dead = robust_inverse(h, damp, name=info.name)
                cache[info.path] = (h, hd, hinv, dead)
            sites.append((site, _weights(flat, info), channel_rows(site.channel, size, info.name)))
        cons = []
        for site, w, rows in sites:
            h, hd, hinv, dead = cache[site.layer.path]
            ws = w.copy()
            ws[dead] = 0.0
            if role.compensate:
                cons.append(Consumer(site.layer.name, ws, hinv.copy(), rows))
            else:
                cons.append(Consumer(site.layer.name, ws, hinv, rows, compensate=False, h=hd))
        n_max = size - min(keeps)
        if role.compensate:
            order, _ = greedy_path(cons, n_max)
        else:  # LayerNorm-normalized group: individual no-compensation losses
            order = np.argsort(sum(c.saliency(np.ones(size, bool)) for c in cons), kind="stable")[:n_max]
        mag_order = np.argsort(l2[gid], kind="stable")
        curves = {k: [] for k in CURVES}
        for k in keeps:
            n_rm = size - k
            for name, rm in (("hobs", order[:n_rm]), ("hobs_nocomp", order[:n_rm]),
                             ("magnitude", mag_order[:n_rm])):
                err = ref = 0.0
                for site, w, rows in sites:
                    h = cache[site.layer.path][0]
                    removed = rows[np.asarray(rm, np.int64)].reshape(-1)
                    if name == "hobs" and role.compensate and len(removed):
                        new = compensate(w, cache[site.layer.path][1], removed, name=site.layer.name)
                    else:
                        new = w.copy()
                        new[removed] = 0.0
                    dw = w - new
                    err += float(np.sum(dw * (h @ dw)))
                    ref += float(np.sum(w * (h @ w)))
                curves[name].append(err / ref if ref > 0 else 0.0)
        out[gid] = {"consumers": [s.layer.name for s, _, _ in sites], "keep": keeps,
                    "compensated": role.compensate, **curves}
    return out


def fisher_traces(model, variables: Mapping, graph: Graph, images: np.ndarray, labels: np.ndarray, *,
                  batch_size: int = 32) -> dict[int, dict]:
    """Empirical Fisher trace per group: (1/N) sum over examples of the squared gradient
    of the example's cross-entropy w.r.t. every parameter slice of the group (eval mode),
    total and per parameter, plus the per-channel values."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(p, x, y):
        logits = model.apply({"params": p, **rest}, x[None], train=False)[0]
        return -jax.nn.log_softmax(logits)[y]

    @jax.jit
    def sq_grads(p, x, y, w):
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)
        return jax.tree.map(lambda a: jnp.einsum("n,n...->...", w, a * a), g)

    n = len(images)
    acc = None
    for i in range(0, n, batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        w = np.ones(batch_size, np.float32)
        if len(x) < batch_size:
            w[len(x):] = 0
            x = np.concatenate([x, np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - len(y), y.dtype)])
        s = sq_grads(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
        acc = s if acc is None else jax.tree.map(jnp.add, acc, s)
    acc = jax.tree.map(lambda a: np.sqrt(np.asarray(a, np.float64) / n), acc)
    per_channel = group_l2_scores(graph, {"params": acc})  # sqrt of the summed Fisher diagonal
    flat = _flat(variables)
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
                     "per_param": float(fc.sum()) / max(1, nparam)}
    return out


def feature_errors(model, variables: Mapping, graph: Graph, plans: Mapping[str, tuple], x: np.ndarray,
                   infos) -> dict:
    """Relative error of every layer output (kept output channels) of each masked pruned
    network in ``plans`` (name -> (plan, full-size variables)) against the dense network."""
    _, dense = jax.jit(lambda v, x: capture_outputs(model, v, x))(variables, jnp.asarray(x))
    layers = sorted(infos, key=lambda p: infos[p].order)
    out = {"layers": ["/".join(p) for p in layers]}
    for name, (plan, pv) in plans.items():
        masked = mask_variables(graph, pv, plan)
        _, pruned = jax.jit(lambda v, x: capture_outputs(model, v, x))(masked, jnp.asarray(x))
        keep = {g: np.asarray(idx) for g, idx in plan.keep}
        errs = []
        for p in layers:
            info = infos[p]
            a, b = np.asarray(dense[p], np.float64), np.asarray(pruned[p], np.float64)
            # Kept output positions along the kernel's output axes (row-major).
            pos = np.arange(a.shape[-1])
            if len(info.out_axes) == 1:
                va = graph.axis("params", p + ("kernel",), info.out_axes[0])
                if va is not None:
                    pos = layout_indices(va.layout, keep)
                a, b = a[..., pos], b[..., pos]
            errs.append(float(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-30)))
        out[name] = errs
    return out


def analyze(model, variables: Mapping, model_name: str, images: np.ndarray, labels: np.ndarray, *,
            target: float = 0.5, batch_size: int = 256, fisher_examples: int = 256,
            ratios: Sequence[float] = RATIOS, damp: float = 0.01, progress: bool = True) -> dict:
    """Everything ``sensitivity.json`` holds (see module docstring)."""
    from hobs_jax.methods import Calibration, prune

    input_shape = (1,) + tuple(images.shape[1:])
    images = check_images(images, input_shape)
    graph = build_graph(model, variables, input_shape, name=model_name)
    infos = trace_layers(model, variables, input_shape)
    need = sorted({s.layer.path for r in group_roles(graph, infos).values() for s in r.consumers})
    stats = collect_hessians(model, variables, images, paths=need, batch_size=batch_size, progress=progress,
                             infos=infos)
    with blas_threads(1):
        curves = reconstruction_curves(graph, variables, stats, infos, ratios=ratios, damp=damp)
    fisher = fisher_traces(model, variables, graph, images[:fisher_examples], labels[:fisher_examples])
    calib = Calibration(images, labels)
    opts = dict(allocation="uniform", damp=damp, progress=progress, calib_batch_size=batch_size)
    hobs = prune("hobs", model_name, variables, target=target, calib=calib, options=opts)
    mag = prune("magnitude", model_name, variables, target=target)
    plans = {"hobs": (hobs.outcome.plan, hobs.outcome.variables),
             "hobs_nocomp": (hobs.outcome.plan, variables),
             "magnitude": (mag.outcome.plan, variables)}
    feats = feature_errors(model, variables, graph, plans, images[:min(len(images), 128)], infos)
    groups = []
    for g in graph.prunable:
        entry = {"id": g.id, "size": g.size, "kind": g.kind, "widths": list(g.widths),
                 "fisher_trace": fisher[g.id]["trace"], "fisher_per_param": fisher[g.id]["per_param"]}
        if g.id in curves:
            entry.update({k: curves[g.id][k] for k in ("consumers", "keep", "compensated") + CURVES})
        groups.append(entry)
    return {"model": model_name, "calibration_images": int(len(images)), "ratios": list(ratios),
            "damp": damp, "groups": groups,
            "feature_error": {"target": target, "macs_ratio": hobs.macs_ratio, **feats}}


def plot(result: dict, out_dir: str) -> list[str]:
    """curves.png, fisher.png and feature_error.png from :func:`analyze`'s result."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    groups = [g for g in result["groups"] if "hobs" in g]
    ratios = result["ratios"]
    styles = {"hobs": ("H-OBS (compensated)", "C0", "-"), "hobs_nocomp": ("same channels, no compensation", "C1", "--"),
              "magnitude": ("smallest group L2, no compensation", "C2", ":")}
    cols = min(6, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows + 0.6), sharex=True, squeeze=False)
    floor = 1e-6
    for ax, g in zip(axes.flat, groups):
        for k, (label, color, ls) in styles.items():
            ax.plot(ratios, np.maximum(g[k], floor), ls, color=color, label=label, lw=1.5)
        ax.set_yscale("log")
        ax.set_title(f"g{g['id']} {g['kind']} ({g['size']})\n{(g['widths'] or ['-'])[0]}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("keep ratio", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("rel. recon. error", fontsize=7)
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{result['model']}: consumer reconstruction error per group "
                 f"({result['calibration_images']} calibration images)", fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    paths.append(os.path.join(out_dir, "curves.png"))
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)

    allg = result["groups"]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(allg) + 2), 3.4))
    x = np.arange(len(allg))
    ax.bar(x, [g["fisher_trace"] for g in allg], color=["C3" if g["kind"] == "residual" else "C0" for g in allg])
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"g{g['id']}" for g in allg], rotation=90, fontsize=6)
    ax.set_ylabel("empirical Fisher trace")
    ax.set_title(f"{result['model']}: loss sensitivity per group (red: residual streams)", fontsize=9)
    ax.grid(alpha=0.3, axis="y", which="both", lw=0.4)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "fisher.png"))
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)

    fe = result["feature_error"]
    fig, ax = plt.subplots(figsize=(max(6, 0.16 * len(fe["layers"]) + 2), 3.6))
    for k, (label, color, ls) in styles.items():
        ax.plot(np.maximum(fe[k], floor), ls, marker="o", ms=2.5, color=color, label=label, lw=1.3)
    ax.set_yscale("log")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("relative feature-map error")
    n = len(fe["layers"])
    step = max(1, n // 20)
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels([fe["layers"][i] for i in range(0, n, step)], rotation=60, ha="right", fontsize=6)
    ax.set_title(f"{result['model']} pruned to {fe['macs_ratio']:.2f} of the MACs (uniform): "
                 f"dense vs pruned activations", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "feature_error.png"))
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Per-group pruning sensitivity of a saved model (JSON + PNGs).")
    p.add_argument("--checkpoint", required=True, help="directory written by hobs_jax.export.save")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--calib", type=int, default=1024, help="calibration images (training split)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--resize", type=int, default=0, help="resize images to this square size")
    p.add_argument("--target", type=float, default=0.5, help="kept MACs fraction for the Fig. 1 network")
    p.add_argument("--fisher-examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import hobs_jax
    from hobs_jax.data import get_source

    model, variables, meta = hobs_jax.load(a.checkpoint)
    kw = {}
    if a.resize:
        kw["resize_to"] = (a.resize, a.resize)
    if meta.get("in_channels", 1) != 1:
        kw["channels"] = meta["in_channels"]
    src = get_source(a.dataset, **kw)
    n = min(a.calib, src.size("train"))
    idx = np.sort(np.random.default_rng(a.seed).permutation(src.size("train"))[:n])
    images, labels = src.batch("train", idx, train=False)
    result = analyze(model, variables, meta["model"], np.asarray(images, np.float32), np.asarray(labels),
                     target=a.target, batch_size=a.batch_size, fisher_examples=a.fisher_examples)
    result["checkpoint"] = os.path.abspath(a.checkpoint)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "sensitivity.json"), "w") as f:
        json.dump(result, f, indent=1)
    for path in plot(result, a.out):
        print(path)
    print(os.path.join(a.out, "sensitivity.json"))


if __name__ == "__main__":
    main()
