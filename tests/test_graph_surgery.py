"""Surgery invariants, with random plans, on every zoo model (CNNs at 32x32, ViT at
224x224 with narrow widths):
  * the empty plan returns the variables themselves (bit-identical outputs);
  * pruned output == output of the original with the removed channels masked to zero
    (``mask_variables``), max|diff| / max|ref| <= 1e-5 in float32;
  * MACs/params of the pruned model == what its arrays hold == the registry model at
    the new widths == an independent per-layer formula;
  * plan A then plan B == the composed plan, bit for bit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import graph as G
from hobs_jax import macs, models
from tests._zoo_vars import random_variables, zoo_model

ZOO = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet20", "resnet56", "mobilenet_v2",
       "efficientnet_b0", "vit_b_16", "mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")


def _tree_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    return ta == tb and all(pa == pb and np.asarray(x).dtype == np.asarray(y).dtype
                            and np.array_equal(np.asarray(x), np.asarray(y)) for (pa, x), (pb, y) in zip(la, lb))


def _layer_formula(rep0, v0, v1) -> dict[str, int]:
    """MACs per layer of the pruned model from its arrays: spatial/sequence positions are
    unchanged by channel pruning, so a conv or dense layer costs
    ``positions * prod(kernel shape)`` (positions read off the unpruned report), and the
    attention products ``S^2 * heads * qk_dim`` (q.k) and ``S^2 * heads * v_dim`` (p.v)."""
    p0, p1 = v0["params"], v1["params"]

    def node(tree, path):
        for k in path.split("/"):
            tree = tree[k]
        return tree

    by_path: dict[str, int] = {}
    for layer in rep0.layers:
        by_path[layer.path] = by_path.get(layer.path, 0) + layer.macs
    out = {}
    for path, m0 in by_path.items():
        if "->" in path:  # attention einsum "bqhd,bkhd->bhqk" (q.k) or "bhqk,bkhd->bqhd" (p.v)
            attn = path.rsplit("/", 1)[0]
            which = "query" if path.endswith("->bhqk") else "value"
            k0, k1 = node(p0, attn)[which]["kernel"].shape, node(p1, attn)[which]["kernel"].shape
            out[path] = m0 // (k0[1] * k0[2]) * k1[1] * k1[2]  # S^2 * heads * dim
        else:
            k0, k1 = node(p0, path)["kernel"].shape, node(p1, path)["kernel"].shape
            out[path] = m0 // math.prod(k0) * math.prod(k1)  # positions * prod(kernel shape)
    return out


@pytest.mark.parametrize("name", ZOO)
def test_surgery_invariants(name):
    model, shape = zoo_model(name, narrow=name == "vit_b_16")
    v = random_variables(model, shape, seed=1)
    g = G.build_graph(model, v)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    run = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    y = run(model, v, x)

    # 1. empty plan: the variables themselves.
    m0, v0 = G.apply_plan(model, v, G.empty_plan(g), graph=g)
    assert v0 is v and m0 is model and _tree_equal(v0, v)

    # 2. pruned == masked original (groups where masking is exact: all but ViT's LN'd stream).
    plan = G.random_plan(g, seed=3, select=lambda grp: grp.mask_exact)
    assert plan.removes_any(g)
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    y_mask = run(model, G.mask_variables(g, v, plan), x)
    y_pruned = run(pm, pv, x)
    rel = float(jnp.abs(y_pruned - y_mask).max() / jnp.abs(y_mask).max())
    assert rel <= 1e-5, rel
    assert float(jnp.abs(y_mask - y).max()) > 1e-3  # the masked channels did matter

    # 3. MACs and params: counter == arrays == registry at the new widths == per-layer formula.
    rep0 = macs.count(model, v, shape)
    rep = macs.count(pm, pv, shape)
    held = sum(a.size for a in jax.tree.leaves(pv["params"]))
    assert rep.params == held < rep0.params
    widths, nc, ic = models.infer_widths(name, pv)
    zoo = macs.count_zoo(name, widths=widths, num_classes=nc, in_channels=ic, size=shape[1])
    assert (zoo.macs, zoo.params) == (rep.macs, rep.params)
    formula = _layer_formula(rep0, v, pv)
    counted: dict[str, int] = {}
    for layer in rep.layers:
        counted[layer.path] = counted.get(layer.path, 0) + layer.macs
    assert counted == formula
    assert rep.macs == sum(formula.values()) < rep0.macs

    # 4. plan A then plan B == compose(A, B), bit for bit (every prunable group may be cut).
    a = G.random_plan(g, seed=4)
    m1, v1 = G.apply_plan(model, v, a, graph=g)
    g1 = G.build_graph(m1, v1)
    b = G.random_plan(g1, seed=5)
    m2, v2 = G.apply_plan(m1, v1, b, graph=g1)
    m3, v3 = G.apply_plan(model, v, G.compose(a, b, g, g1), graph=g)
    assert m3.widths == m2.widths and _tree_equal(v2, v3)


def test_masking_and_pruning_differ_for_layernormed_stream():
    """ViT's residual stream is normalized by LayerNorm over its width: pruning it is
    not masking it (the graph says so with a note), but the pruned model still runs."""
    model, shape = zoo_model("vit_b_16", narrow=True)
    v = random_variables(model, shape, seed=1)
    g = G.build_graph(model, v)
    hidden = g.by_width("hidden")
    plan = G.make_plan(g, {hidden.id: tuple(range(0, hidden.size, 2))})
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    assert pm.widths["hidden"] == (hidden.size + 1) // 2
    x = jnp.ones(shape, jnp.float32)
    y_mask, y_pruned = model.apply(G.mask_variables(g, v, plan), x), pm.apply(pv, x)
    assert y_pruned.shape == y_mask.shape and bool(jnp.isfinite(y_pruned).all())
    assert float(jnp.abs(y_pruned - y_mask).max() / jnp.abs(y_mask).max()) > 1e-3
