"""Block-ELL layers in the zoo: conversion, dense parity, torch export, gradients, fit,
spec round trip and bad input (hobs_jax.models.sparse, hobs_jax.sparse)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import models, sparse
from hobs_jax.graph import apply_plan, build_graph, random_plan
from hobs_jax.models import sparse as msparse
from hobs_jax.obs.block import prune as prune_obs
from kernels import keep_per_row, prune
from tests._tiny import enable_compile_cache

enable_compile_cache()


def rel(a, b) -> float:
    """max|a - b| / max|b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def narrow(name, scale, floor):
    return {k: max(floor, v // scale) for k, v in models.default_widths(name).items()}


def check_dropped_blocks_zero(sparse_model, dense_vars):
    """Every dense kernel of a converted layer is zero exactly outside its pattern."""
    for path, pattern in sparse_model.block_ell.items():
        node = dense_vars["params"]
        for p in path.split("."):
            node = node[p]
        k, n = pattern.shape
        b = pattern.block
        w = np.asarray(node["kernel"]).reshape(k, n)
        wp = np.zeros(pattern.meta.padded_shape)
        wp[:k, :n] = w
        nonzero = np.abs(wp.reshape(wp.shape[0] // b, b, -1, b)).sum(axis=(1, 3)) > 0
        assert not (nonzero & ~pattern.block_mask()).any(), path


@pytest.fixture(scope="module")
def resnet50():
    """A ResNet-50 channel-pruned by the graph (narrow widths, then a random plan with
    kept counts rounded to 8, ``apply_plan``), 64x64 inputs, every eligible layer
    (bottleneck 1x1 convs, strided downsample convs, fc) Block-ELL at b=8, 50%."""
    shape = (1, 64, 64, 3)
    dense = models.build("resnet50", widths=narrow("resnet50", 4, 16), num_classes=10)
    v0 = models.random_variables(dense, shape, seed=0)
    graph = build_graph(dense, v0, shape, name="resnet50")
    plan = random_plan(graph, seed=0, min_ratio=0.4, max_ratio=0.8, round_to=8)
    model, v = apply_plan(dense, v0, plan, graph=graph)
    sm, sv = sparse.to_block_ell("resnet50", v, 0.5, 8)
    dm, dv = sparse.to_dense(sm, sv)
    x = np.random.RandomState(1).randn(2, 64, 64, 3).astype(np.float32)
    return dict(model=model, v=v, sm=sm, sv=sv, dm=dm, dv=dv, x=x, dense=dense,
                ys=np.asarray(jax.jit(sm.apply)(sv, x)))


def test_resnet50_block_ell_equals_dense_with_zeroed_blocks(resnet50):
    r = resnet50
    assert dict(r["model"].widths) != dict(r["dense"].widths)  # channel-pruned
    spec = r["sm"].block_ell
    eligible = msparse.eligible_layers(r["model"], (1, 64, 64, 3))
    assert sorted(spec) == sorted(eligible) and len(spec) == 16 * 2 + 4 + 1
    assert all(p.endswith(("conv1", "conv3", "downsample.0", "fc")) for p in spec)
    assert eligible["layer2.0.downsample.0"].stride == (2, 2)  # subsampled, then Block-ELL
    for path, p in spec.items():  # balanced: round(C / 2) blocks in every block-row
        info = eligible[path]
        r_blocks, c_blocks = -(-info.k // 8), -(-info.n // 8)
        assert p.shape == (info.k, info.n) and p.slots == keep_per_row(c_blocks, 0.5)
        assert (p.col_idx >= 0).all() and p.density() == keep_per_row(c_blocks, 0.5) / c_blocks
        node = r["sv"]["params"]
        for k in path.split("."):
            node = node[k]
        assert node[msparse.VALUES].shape == (r_blocks, p.slots, 8, 8) and "kernel" not in node
    assert r["sv"]["params"]["layer1"]["0"]["conv2"]["kernel"].ndim == 4  # 3x3 stays dense
    check_dropped_blocks_zero(r["sm"], r["dv"])
    yd = np.asarray(jax.jit(r["dm"].apply)(r["dv"], r["x"]))
    assert r["dm"].block_ell is None and r["ys"].shape == (2, 10)
    assert rel(r["ys"], yd) <= 1e-5
    # pruning changed the network (the parity above is not dense vs dense)
    assert rel(np.asarray(jax.jit(r["model"].apply)(r["v"], r["x"])), yd) > 1e-2


def test_resnet50_block_ell_exports_to_torch(resnet50):
    torch = pytest.importorskip("torch")
    from parity.convert import flax_to_torch

    r = resnet50
    tm = flax_to_torch("resnet50", jax.device_get(r["dv"]))
    with torch.no_grad():
        yt = tm(torch.from_numpy(r["x"].transpose(0, 3, 1, 2))).numpy()
    assert yt.shape == (2, 10) and rel(r["ys"], yt) <= 1e-5


def test_mobilenet_v2_pointwise_and_classifier_block_ell():
    name = "mobilenet_v2"
    model = models.build(name, widths=narrow(name, 4, 8), num_classes=16)
    v = models.random_variables(model, (1, 32, 32, 3), seed=3)
    sm, sv = sparse.to_block_ell(model, v, 0.75, 8, input_shape=(1, 32, 32, 3))
    assert {"features.2.conv.0.0", "features.2.conv.2", "features.18.0", "classifier.1"} <= set(
        sm.block_ell)
    assert not any(p.endswith("conv.1.0") for p in sm.block_ell)  # depthwise 3x3 stays dense
    dm, dv = sparse.to_dense(sm, sv, input_shape=(1, 32, 32, 3))
    check_dropped_blocks_zero(sm, dv)
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    assert rel(jax.jit(sm.apply)(sv, x), jax.jit(dm.apply)(dv, x)) <= 1e-5


def test_vit_mlp_and_head_block_ell():
    name = "vit_b_16"
    w = {k: (32 if k == "hidden" else 2 if k.endswith("heads") else 16 if k.endswith("_dim")
             else 64) for k in models.default_widths(name)}
    model = models.build(name, widths=w, num_classes=16, image_size=32)
    v = models.random_variables(model, (1, 32, 32, 3), seed=4)
    v = jax.tree_util.tree_map_with_path(  # the zoo's zero-initialized head would hide errors
        lambda p, a: a if "head" not in str(p) else np.random.RandomState(5).randn(*a.shape)
        .astype(np.float32), v)
    sm, sv = sparse.to_block_ell(model, v, 0.5, 16)
    assert len(sm.block_ell) == 25 and "heads.head" in sm.block_ell
    assert sm.block_ell["encoder.layers.encoder_layer_3.mlp.0"].shape == (32, 64)
    dm, dv = sparse.to_dense(sm, sv)
    check_dropped_blocks_zero(sm, dv)
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    assert rel(jax.jit(sm.apply)(sv, x), jax.jit(dm.apply)(dv, x)) <= 1e-5


@pytest.fixture(scope="module")
def resnet20():
    """ResNet-20 (1 input channel) with its strided 1x1 downsample convs and fc in
    Block-ELL at b=8 (fc's N=10 pads to 16)."""
    model = models.build("resnet20", in_channels=1)
    v = models.random_variables(model, (1, 8, 8, 1), seed=1)
    sm, sv = sparse.to_block_ell(model, v, 0.5, 8, input_shape=(1, 8, 8, 1))
    return model, v, sm, sv


def test_resnet20_downsample_and_classifier(resnet20):
    _, _, sm, sv = resnet20
    assert sorted(sm.block_ell) == ["fc", "layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert sm.block_ell["fc"].shape == (64, 10) and sm.block_ell["fc"].meta.padded_shape == (64, 16)
    assert sv["params"]["fc"][msparse.VALUES].shape == (8, 1, 8, 8)
    dm, dv = sparse.to_dense(sm, sv, input_shape=(1, 8, 8, 1))
    x = np.random.RandomState(0).randn(4, 8, 8, 1).astype(np.float32)
    assert rel(jax.jit(sm.apply)(sv, x), jax.jit(dm.apply)(dv, x)) <= 1e-5


def test_gradients_are_dense_gradients_on_kept_blocks(resnet20):
    _, _, sm, sv = resnet20
    dm, dv = sparse.to_dense(sm, sv, input_shape=(1, 8, 8, 1))
    rng = np.random.RandomState(2)
    x = rng.randn(4, 8, 8, 1).astype(np.float32)
    t = rng.randn(4, 10).astype(np.float32)

    def loss(model, bs):
        return lambda p: jnp.sum(model.apply({"params": p, "batch_stats": bs}, x) * t)

    gs = jax.jit(jax.grad(loss(sm, sv["batch_stats"])))(sv["params"])
    gd = jax.jit(jax.grad(loss(dm, dv["batch_stats"])))(dv["params"])
    for path, pattern in sm.block_ell.items():
        keys = path.split(".")
        g_s, g_d = gs, gd
        for k in keys:
            g_s, g_d = g_s[k], g_d[k]
        want = msparse.gather_blocks(g_d["kernel"].reshape(pattern.shape), pattern.col_idx,
                                     pattern.meta)
        assert g_s[msparse.VALUES].shape == want.shape
        assert rel(g_s[msparse.VALUES], want) <= 1e-5, path
        if "bias" in g_d:
            assert rel(g_s["bias"], g_d["bias"]) <= 1e-5
    # every other parameter gets the dense model's gradient
    assert rel(gs["layer1"]["0"]["conv1"]["kernel"], gd["layer1"]["0"]["conv1"]["kernel"]) <= 1e-5


def test_fit_trains_only_kept_blocks(resnet20, tmp_path):
    from hobs_jax.data import TrainLoader, get_source
    from hobs_jax.train import fit, get_train_config

    _, _, sm, sv = resnet20
    src = get_source("synthetic", image_shape=(8, 8, 1), num_classes=10, train_size=64,
                     test_size=16)
    c = get_train_config()
    c.steps, c.batch_size, c.lr, c.log_every = 3, 16, 0.05, 3
    c.progress, c.tensorboard, c.checkpoint.every_steps = False, False, 0
    r = fit(sm, sv, TrainLoader(src, "train", 16, seed=0), c, str(tmp_path))
    assert r.metrics["steps"] == 3 and np.isfinite(r.metrics["train_loss"])
    after = jax.device_get(r.variables)
    assert set(after) == {"params", "batch_stats"}
    for path in sm.block_ell:
        a, b = after["params"], sv["params"]
        for k in path.split("."):
            a, b = a[k], b[k]
        assert a[msparse.VALUES].shape == b[msparse.VALUES].shape
        assert np.abs(np.asarray(a[msparse.VALUES]) - np.asarray(b[msparse.VALUES])).max() > 0
    _, d0 = sparse.to_dense(sm, sv, input_shape=(1, 8, 8, 1))
    _, d1 = sparse.to_dense(sm, after, input_shape=(1, 8, 8, 1))
    check_dropped_blocks_zero(sm, d1)
    w0 = np.asarray(d0["params"]["fc"]["kernel"])
    w1 = np.asarray(d1["params"]["fc"]["kernel"])
    kept = np.kron(sm.block_ell["fc"].block_mask(), np.ones((8, 8)))[:64, :10].astype(bool)
    assert np.all(w1[~kept] == 0) and np.all(w0[~kept] == 0) and np.any(w1[kept] != w0[kept])


def test_obs_method_uses_the_hessian(resnet20):
    model, v, _, _ = resnet20
    h = np.cov(np.random.RandomState(3).randn(64, 200)) + np.eye(64)
    sm, sv = sparse.to_block_ell(model, v, 0.5, 8, method="obs", hessians={"fc": h},
                                 layers=["fc"], input_shape=(1, 8, 8, 1))
    want = prune_obs(np.asarray(v["params"]["fc"]["kernel"]), h, 8, 0.5)
    assert list(sm.block_ell) == ["fc"]
    np.testing.assert_array_equal(sm.block_ell["fc"].col_idx, np.asarray(want.col_idx))
    np.testing.assert_allclose(sv["params"]["fc"][msparse.VALUES], want.values, rtol=1e-6)


def test_spec_round_trips_through_json_and_build(resnet20):
    _, v, sm, sv = resnet20
    data = json.loads(json.dumps(msparse.spec_to_dict(sm.block_ell)))
    spec = msparse.spec_from_dict(data)
    assert spec == sm.block_ell and hash(spec) == hash(sm.block_ell)
    rebuilt = models.build("resnet20", in_channels=1, block_ell=spec)
    assert rebuilt == sm and hash(rebuilt) == hash(sm)  # same jit cache entry
    shapes = jax.eval_shape(lambda: models.init(rebuilt, jax.random.key(0), (1, 8, 8, 1)))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(np.shape, sv)


def test_standalone_layers_match_flax_dense_and_conv():
    rng = np.random.RandomState(0)
    w = rng.randn(24, 40).astype(np.float32)
    bw = prune(w, 8, 0.6)
    pattern = msparse.BlockPattern.from_block_ell(bw)
    wd = np.asarray(bw.todense())
    x = rng.randn(3, 5, 24).astype(np.float32)
    layer = msparse.BlockELLDense(40, pattern)
    v = layer.init(jax.random.key(0), x)
    assert v["params"][msparse.VALUES].shape == (3, 2, 8, 8) and v["params"]["bias"].shape == (40,)
    v = {"params": {msparse.VALUES: bw.values, "bias": jnp.arange(40.0)}}
    want = nn.Dense(40).apply({"params": {"kernel": wd, "bias": jnp.arange(40.0)}}, x)
    assert rel(layer.apply(v, x), want) <= 1e-6
    xc = rng.randn(2, 7, 7, 24).astype(np.float32)
    conv = msparse.BlockELLConv1x1(40, pattern, strides=2)
    yc = conv.apply({"params": {msparse.VALUES: bw.values}}, xc)
    want = nn.Conv(40, (1, 1), strides=2, padding=0, use_bias=False).apply(
        {"params": {"kernel": wd[None, None]}}, xc)
    assert yc.shape == (2, 4, 4, 40) and rel(yc, want) <= 1e-6
    # initialization: kept blocks of a dense lecun_normal sample; padding slots zero
    padded = msparse.BlockPattern.from_col_idx(np.array([[0, 4, -1]] * 32), (256, 40), 8)
    vi = msparse.BlockELLConv1x1(40, padded).init(jax.random.key(1), np.zeros((1, 1, 1, 256),
                                                                               np.float32))
    vi = np.asarray(vi["params"][msparse.VALUES])
    assert vi.shape == (32, 3, 8, 8) and np.all(vi[:, 2] == 0)
    assert abs(vi[:, :2].std() * np.sqrt(256) - 1) < 0.1 and abs(vi[:, :2].mean()) < 0.01


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, "half"])
def test_bad_sparsity(resnet20, sparsity):
    model, v, _, _ = resnet20
    with pytest.raises(ValueError, match="sparsity"):
        sparse.to_block_ell(model, v, sparsity, 8, input_shape=(1, 8, 8, 1))


def test_bad_block_and_layer(resnet20):
    model, v, sm, sv = resnet20
    shape = (1, 8, 8, 1)
    with pytest.raises(ValueError, match="power of two"):
        sparse.to_block_ell(model, v, 0.5, 12, input_shape=shape)
    with pytest.raises(ValueError, match=r"^layer2\.0\.downsample\.0: block=32 exceeds W \[K=16"):
        sparse.to_block_ell(model, v, 0.5, 32, layers=["layer2.0.downsample.0"], input_shape=shape)
    with pytest.raises(ValueError, match=r"^layer1\.0\.conv1: not an eligible layer"):
        sparse.to_block_ell(model, v, 0.5, 8, layers=["layer1.0.conv1"], input_shape=shape)
    with pytest.raises(ValueError, match=r"^fc: already a Block-ELL layer"):
        sparse.to_block_ell(sm, sv, 0.5, 8, layers=["fc"], input_shape=shape)
    with pytest.raises(ValueError, match="no layer of resnet20 to convert"):
        sparse.to_block_ell(model, v, 0.5, 128, input_shape=shape)
    with pytest.raises(ValueError, match=r"^fc: method='obs' needs hessians"):
        sparse.to_block_ell(model, v, 0.5, 8, method="obs", layers=["fc"], input_shape=shape)


def test_bad_spec_in_build(resnet20):
    _, _, sm, _ = resnet20
    fc = sm.block_ell["fc"]
    with pytest.raises(ValueError, match=r"^layer1\.0\.conv1: a 3x3 conv is not eligible"):
        models.build("resnet20", in_channels=1, block_ell={"layer1.0.conv1": fc})
    with pytest.raises(ValueError, match=r"block_ell names 'layer9\.fc', which is no layer"):
        models.build("resnet20", in_channels=1, block_ell={"layer9.fc": fc})
    with pytest.raises(ValueError, match=r"^fc: Block-ELL pattern is for W \[64, 10\] but the "
                                         r"layer maps 64 -> 7"):
        models.build("resnet20", in_channels=1, num_classes=7, block_ell={"fc": fc})
    with pytest.raises(ValueError, match="must be a BlockPattern"):
        models.build("resnet20", in_channels=1, block_ell={"fc": np.zeros((8, 1))})
    with pytest.raises(ValueError, match="out of range"):
        msparse.BlockPattern.from_col_idx(np.full((8, 1), 5), (64, 10), 8)


@pytest.mark.parametrize("kw,reason", [
    (dict(kernel_size=(3, 3)), "a 3x3 conv"),
    (dict(kernel_size=(1, 1), feature_group_count=2), "a grouped conv (groups=2)"),
    (dict(kernel_size=(1, 1), padding=((1, 1), (1, 1))), "a padded 1x1 conv"),
    (dict(kernel_size=(1, 1), padding="SAME", strides=2), None),
    (dict(kernel_size=(1, 1), padding=0), None),
])
def test_conv_eligibility_rule(kw, reason):
    got = msparse._conv_ineligible(msparse.Conv(4, **kw))
    assert got == reason if reason is None else got.startswith(reason)


def test_block_ell_model_saves_and_loads_with_its_pattern(tmp_path):
    import hobs_jax
    from hobs_jax import export, macs
    from hobs_jax.sparse import to_block_ell

    m = models.build("resnet20", in_channels=1)
    v = models.random_variables(m, (1, 28, 28, 1))
    sm, sv = to_block_ell(m, v, sparsity=0.5, block=16, input_shape=(1, 28, 28, 1))
    export.save(str(tmp_path / "ck"), sm, sv)
    lm, lv, meta = hobs_jax.load(str(tmp_path / "ck"))
    assert lm == sm and meta["block_ell"]
    x = np.random.RandomState(0).randn(2, 28, 28, 1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(sm.apply(sv, x)), np.asarray(lm.apply(lv, x)))
    # The counter sees every chunk of the Block-ELL loop (the executed MACs, 50% of dense
    # blocks; rows padded to the kernel's chunk).
    dense = {l.path: l.macs for l in macs.count(m, v, (1, 28, 28, 1)).layers}
    sparse = {l.path.split(".block_ell")[0]: l.macs for l in macs.count(sm, sv, (1, 28, 28, 1)).layers}
    assert sparse["layer3/0/downsample/0"] == dense["layer3/0/downsample/0"] // 2
