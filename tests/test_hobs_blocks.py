"""H-OBS on the blocks that make MobileNetV2, EfficientNet and ViT hard to prune: a
depthwise conv (compensated through the pointwise projection that reads it), a
squeeze-excitation gate (the squeeze FC is a consumer compensated from the pooled
activations, the excite FC's outputs go with the channels), attention heads and MLP
neurons (the output projections compensated, heads removed whole).

Small networks made of the zoo's own blocks (``InvertedResidual``, ``MBConv``, the ViT
encoder at width 32), BatchNorm statistics calibrated on real Fashion-MNIST images, random
weights otherwise (no trained checkpoint exists here). Per consumer, the compensated
kernel is checked against the closed-form least-squares optimum computed here from the
layer's input rows (not from the library's Hessian), and on held-out test images the
compensated consumer and block reproduce the dense network better than removal without
compensation. The pruned network is a real smaller one (surgery) equal to the masked
full-size one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import graph as G
from hobs_jax import models, obs
from hobs_jax.analysis.compensation import consumer_errors, output_error, prune_groups, relative_error
from hobs_jax.methods import group_roles
from hobs_jax.models import vit
from hobs_jax.models.efficientnet import MBConv
from hobs_jax.models.layers import ConvBNAct, relu6
from hobs_jax.models.mobilenet import InvertedResidual
from hobs_jax.stats import reestimate_bn
from hobs_jax.stats.layers import capture_inputs, layer_rows, trace_layers
from hobs_jax.testing.init import random_linen
from tests._tiny import enable_compile_cache

enable_compile_cache()

SHAPE = (1, 28, 28, 1)
DAMP = 0.01


class TinyMobile(nn.Module):
    """stem -> two inverted residuals (expand, 3x3 depthwise, linear 1x1 projection) -> pool -> dense."""

    stem: int = 8
    hidden1: int = 24
    out1: int = 8
    hidden2: int = 32
    out2: int = 12

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNAct(self.stem, 3, 2, act=relu6, name="stem")(x, train)
        x = InvertedResidual(self.hidden1, self.out1, 1, True, False, name="block1")(x, train)
        x = InvertedResidual(self.hidden2, self.out2, 2, True, False, name="block2")(x, train)
        self.sow("intermediates", "block2:out", x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


class TinyEfficient(nn.Module):
    """stem -> two MBConv blocks (expand, depthwise, squeeze-excitation, projection) -> pool -> dense."""

    stem: int = 8
    hidden1: int = 24
    se1: int = 4
    out1: int = 8
    hidden2: int = 32
    se2: int = 6
    out2: int = 12

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNAct(self.stem, 3, 2, act=nn.silu, name="stem")(x, train)
        x = MBConv(self.hidden1, self.se1, self.out1, 3, 1, True, False, 0.0, name="block1")(x, train)
        x = MBConv(self.hidden2, self.se2, self.out2, 3, 2, True, False, 0.0, name="block2")(x, train)
        self.sow("intermediates", "block2:out", x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


VIT_WIDTHS = dict(vit.vit_default_widths(6, 32, 4, 64))


@pytest.fixture(scope="module")
def data():
    from hobs_jax.data import get_source

    src = get_source("fashion_mnist", augment=False)
    x, _ = src.batch("train", np.arange(512), train=False)
    t, _ = src.batch("test", np.arange(256), train=False)
    return np.asarray(x, np.float32), np.asarray(t, np.float32)


def _calibrated(module, data):
    """A Prunable of ``module`` with random weights and BN statistics of real images."""
    x, _ = data
    v = random_linen(module, SHAPE, seed=0) if not isinstance(module, vit.VisionTransformer) else \
        models.random_variables(module, SHAPE, seed=0)
    p = G.as_prunable(module, v, SHAPE)
    if "batch_stats" in p.variables:
        p = p.with_variables(reestimate_bn(p.module, p.variables, [x[i:i + 128] for i in range(0, 512, 128)]))
    return p


def _setup(module, data):
    p = _calibrated(module, data)
    graph = G.graph_of(p)
    infos = trace_layers(p.module, p.variables, SHAPE)
    return p, graph, infos, group_roles(graph, infos)


@pytest.fixture(scope="module")
def mobile(data):
    return _setup(TinyMobile(), data)


@pytest.fixture(scope="module")
def efficient(data):
    return _setup(TinyEfficient(), data)


@pytest.fixture(scope="module")
def vit_net(data):
    return _setup(models.build("vit_tiny_p4", widths=VIT_WIDTHS), data)


def _group(graph, roles, pred):
    """The one prunable group whose ChannelGroup satisfies ``pred``."""
    found = [g for g, r in roles.items() if pred(r)]
    assert len(found) == 1, found
    return found[0]


def _check_closed_form(p, case, images, names):
    """Every consumer in ``names``: compensated kernel == the ridge least squares anchored
    at the dense weights, ``argmin (2/n)||X_K W' - X W||^2 + lam ||W' - W_K||^2``
    (``lam = DAMP * mean(diag H)``), solved here as one stacked least-squares problem from
    the layer's input rows; removed rows zero."""
    dense, comp = obs.flat_variables(p.variables), obs.flat_variables(case.unmasked)
    xs = capture_inputs(p.module, p.variables, jnp.asarray(images), list(case.rows))
    seen = set()
    for path, (info, rem) in case.rows.items():
        seen.add(info.name)
        x = np.asarray(layer_rows(info, xs[path]), np.float64)
        if info.use_bias:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        n, d = x.shape
        h = (2.0 / n) * x.T @ x
        diag = np.diag(h).copy()
        diag[diag <= 0] = 1.0  # dead inputs (the library's dampen rule)
        lam = DAMP * diag.mean()
        keep = np.setdiff1d(np.arange(d), rem)
        w = obs.layer_weights(dense, info, info.use_bias)
        a = np.concatenate([np.sqrt(2.0 / n) * x[:, keep], np.sqrt(lam) * np.eye(len(keep))])
        b = np.concatenate([np.sqrt(2.0 / n) * x @ w, np.sqrt(lam) * w[keep]])
        want = np.linalg.lstsq(a, b, rcond=None)[0]
        got = obs.layer_weights(comp, info, info.use_bias)
        assert np.all(got[rem] == 0), info.name
        assert relative_error(got[keep], want) < 1e-3, (info.name, relative_error(got[keep], want))
    assert seen == set(names), seen


def _check_surgery(p, graph, case, images):
    """The pruned network is smaller and equals the masked full-size one."""
    small = G.apply_plan(p, case.unmasked, case.plan, graph=graph)
    n_before = sum(np.size(a) for a in jax.tree.leaves(p.variables["params"]))
    n_after = sum(np.size(a) for a in jax.tree.leaves(small.variables["params"]))
    assert n_after < n_before
    x = jnp.asarray(images[:32])
    ref = np.asarray(p.module.apply(case.compensated, x, train=False))
    got = np.asarray(small.module.apply(small.variables, x, train=False))
    assert np.max(np.abs(got - ref)) <= 1e-5 * max(np.max(np.abs(ref)), 1.0)
    return small


def test_depthwise_channel_is_compensated_through_the_pointwise_projection(data, mobile):
    x, t = data
    p, graph, infos, roles = mobile
    dw = ("block2", "conv", "1", "0")
    gid = _group(graph, roles, lambda r: dw in r.passthrough)
    r = roles[gid]
    # The depthwise conv passes the channels through; the consumer is the projection only.
    assert [s.layer.name for s in r.consumers] == ["block2/conv/2"]
    assert infos[dw].kind == "depthwise" and r.compensate
    case = prune_groups(p, graph, [gid], x[:256], keep=0.5, damp=DAMP)
    assert len(case.removed[gid]) == 16
    _check_closed_form(p, case, x[:256], ["block2/conv/2"])
    err = consumer_errors(p, case, t)["block2/conv/2"]
    assert err["compensated"] < 0.9 * err["uncompensated"], err
    # The block's output (projection + BN): the layer's gain carries over exactly
    # (BN is per channel), measured on held-out images.
    key = ("block2:out",)
    e_c, e_n = output_error(p, case.compensated, t, key), output_error(p, case.uncompensated, t, key)
    assert e_c < 0.9 * e_n, (e_c, e_n)
    small = _check_surgery(p, graph, case, t)
    assert small.variables["params"]["block2"]["conv"]["1"]["0"]["kernel"].shape == (3, 3, 1, 16)
    assert small.variables["params"]["block2"]["conv"]["2"]["kernel"].shape == (1, 1, 16, 12)


def test_refit_true_is_the_plain_least_squares_optimum(data, mobile):
    """``refit=True`` (undampened H): the projection's output error on the calibration
    rows equals the least-squares optimum's."""
    x, _ = data
    p, graph, _, roles = mobile
    gid = _group(graph, roles, lambda r: ("block2", "conv", "1", "0") in r.passthrough)
    case = prune_groups(p, graph, [gid], x[:256], keep=0.5, refit=True)
    (info, rem), = case.rows.values()
    xin = capture_inputs(p.module, p.variables, jnp.asarray(x[:256]), [info.path])[info.path]
    rows = np.asarray(layer_rows(info, xin), np.float64)
    w = obs.layer_weights(obs.flat_variables(p.variables), info, False)
    keep = np.setdiff1d(np.arange(rows.shape[1]), rem)
    best = np.linalg.lstsq(rows[:, keep], rows @ w, rcond=None)[0]
    got = obs.layer_weights(obs.flat_variables(case.unmasked), info, False)[keep]
    e_best = np.linalg.norm(rows[:, keep] @ best - rows @ w)
    e_got = np.linalg.norm(rows[:, keep] @ got - rows @ w)
    assert e_got <= e_best * (1 + 1e-4), (e_got, e_best)
    assert e_best < 0.9 * np.linalg.norm(rows[:, keep] @ w[keep] - rows @ w)


def test_squeeze_excitation_squeeze_fc_is_a_compensated_consumer(data, efficient):
    x, t = data
    p, graph, _, roles = efficient
    dw = ("block2", "block", "1", "0")
    gid = _group(graph, roles, lambda r: dw in r.passthrough)
    r = roles[gid]
    cons = sorted(s.layer.name for s in r.consumers)
    prods = sorted(s.layer.name for s in r.producers)
    # The squeeze FC reads the pruned channels (a consumer: its pooled input is the
    # depthwise output, channel for channel); the excite FC writes them (a producer).
    assert cons == ["block2/block/2/fc1", "block2/block/3/0"], cons
    assert "block2/block/2/fc2" in prods and "block2/block/0/0" in prods, prods
    # The squeeze width itself: read by the excite FC (compensated), written by the squeeze FC.
    se = _group(graph, roles, lambda r: [s.layer.name for s in r.consumers] == ["block2/block/2/fc2"])
    assert [s.layer.name for s in roles[se].producers] == ["block2/block/2/fc1"] and roles[se].size == 6
    case = prune_groups(p, graph, [gid], x, keep=0.5, damp=DAMP)
    # 512 images: one pooled row each for the squeeze FC (33 inputs with its bias).
    _check_closed_form(p, case, x, cons)
    errs = consumer_errors(p, case, t)
    for name in cons:
        assert errs[name]["compensated"] < errs[name]["uncompensated"], (name, errs[name])
    # The gate's nonlinearity makes the block-level effect approximate: measured.
    key = ("block2:out",)
    e_c, e_n = output_error(p, case.compensated, t, key), output_error(p, case.uncompensated, t, key)
    assert e_c < e_n, (e_c, e_n)
    small = _check_surgery(p, graph, case, t)
    se = small.variables["params"]["block2"]["block"]["2"]
    assert se["fc1"]["kernel"].shape == (1, 1, 16, 6) and se["fc2"]["kernel"].shape == (1, 1, 6, 16)
    assert se["fc2"]["bias"].shape == (16,)


def test_attention_heads_removed_whole_and_projections_compensated(data, vit_net):
    x, t = data
    p, graph, _, roles = vit_net
    att = ("encoder", "layers", "encoder_layer_5", "self_attention")
    mlp = ("encoder", "layers", "encoder_layer_5", "mlp")
    heads = _group(graph, roles, lambda r: {s.layer.path for s in r.producers} == {att + (k,) for k in
                                                                                    ("query", "key", "value")})
    neurons = _group(graph, roles, lambda r: [s.layer.path for s in r.consumers] == [mlp + ("3",)])
    assert [s.layer.path for s in roles[heads].consumers] == [att + ("out",)] and roles[heads].size == 4
    case = prune_groups(p, graph, [heads, neurons], x[:256], keep=0.5, damp=DAMP)
    out, fc2 = "/".join(att + ("out",)), "/".join(mlp + ("3",))
    # A head is 8 rows of the out projection's [heads * v_dim] inputs: 2 heads, 16 rows.
    assert len(case.rows[att + ("out",)][1]) == 16
    _check_closed_form(p, case, x[:256], [out, fc2])
    errs = consumer_errors(p, case, t)
    for name in (out, fc2):
        assert errs[name]["compensated"] < 0.9 * errs[name]["uncompensated"], (name, errs[name])
    # The encoder layer's two residual branches (its output minus its input).
    key, before = ("encoder", "layers", "encoder_layer_5:out"), ("encoder", "layers", "encoder_layer_4:out")
    e_c = output_error(p, case.compensated, t, key, minus=before)
    e_n = output_error(p, case.uncompensated, t, key, minus=before)
    assert e_c < 0.9 * e_n, (e_c, e_n)
    small = _check_surgery(p, graph, case, t)
    # Whole heads: every q, k, v column and every out row of a removed head is gone,
    # the kept heads' slices are the original ones (q, k, v) or the compensated ones (out).
    kept = np.setdiff1d(np.arange(4), case.removed[heads])
    sa = small.variables["params"]["encoder"]["layers"]["encoder_layer_5"]["self_attention"]
    dense = p.variables["params"]["encoder"]["layers"]["encoder_layer_5"]["self_attention"]
    comp = case.unmasked["params"]["encoder"]["layers"]["encoder_layer_5"]["self_attention"]
    for k in ("query", "key", "value"):
        assert sa[k]["kernel"].shape == (32, 2, 8)
        np.testing.assert_array_equal(sa[k]["kernel"], np.asarray(dense[k]["kernel"])[:, kept])
        np.testing.assert_array_equal(sa[k]["bias"], np.asarray(dense[k]["bias"])[kept])
    assert sa["out"]["kernel"].shape == (2, 8, 32)
    np.testing.assert_array_equal(sa["out"]["kernel"], np.asarray(comp["out"]["kernel"])[kept])
    assert small.module.widths["encoder_layer_5.heads"] == 2


def test_groups_without_a_consumer_to_compensate_are_refused_in_one_line(data, vit_net):
    p, graph, _, _ = vit_net
    hidden = next(g.id for g in graph.prunable if "hidden" in g.widths)
    qk = next(g.id for g in graph.prunable if "encoder_layer_5.qk_dim" in g.widths)
    x = data[0][:16]
    with pytest.raises(ValueError, match=f"group {hidden} has nothing to compensate .*LayerNorm"):
        prune_groups(p, graph, [hidden], x)
    with pytest.raises(ValueError, match=f"group {qk} has nothing to compensate .*no channel-mixing consumer"):
        prune_groups(p, graph, [qk], x)


def test_grid_changes_have_the_shapes_of_the_parameters_they_change(vit_net):
    """R-SPAR's per-count changes of q/k (masked at their producers: kernel [d, heads,
    head_dim], bias [heads, head_dim]) stack on the parameters' own shapes, and the
    out projection's kept-row masks on its kernel's."""
    p, graph, _, roles = vit_net
    flat = obs.flat_variables(p.variables)
    qk = next(g.id for g in graph.prunable if "encoder_layer_5.qk_dim" in g.widths)
    heads = next(g.id for g in graph.prunable if "encoder_layer_5.heads" in g.widths)
    counts = np.array([2, 5, 8])
    grid = obs.group_grid(roles[qk], np.arange(8), counts, flat, compensate_rows=False)
    assert {path.rpartition("/")[2] for path, _ in grid} == {"query", "key"}
    for (path, leaf), arr in grid.items():
        assert arr.shape == (3,) + np.shape(flat[("params",) + tuple(path.split("/")) + (leaf,)]), (path, leaf)
    rows = obs.group_kept_rows(roles[heads], np.arange(4), np.array([1, 4]))
    (path, mask), = rows.items()
    assert path.endswith("self_attention/out") and mask.shape == (2, 4, 8, 32)
    assert mask[0, :3].sum() == 0 and mask[0, 3].min() == 1 and mask[1].min() == 1  # keep 1: heads 0-2 go


def test_sample_starved_layers_keep_their_obs_compensation(data, efficient):
    """The sequential refit leaves a layer with fewer calibration rows per kept input than
    ``min_rows`` at its compensated weights: the squeeze FC (one pooled row per image)
    with 16 images, while the convs (a row per pixel) are refit."""
    x, _ = data
    p, graph, infos, roles = efficient
    gid = _group(graph, roles, lambda r: ("block2", "block", "1", "0") in r.passthrough)
    case = prune_groups(p, graph, [gid], x[:64], keep=0.5)
    layers = [i for i in infos.values() if i.kind in ("conv", "dense")]
    rem = {path: r for path, (_, r) in case.rows.items()}
    skipped: list = []
    got = obs.refit_sequential(p.module, p.variables, case.unmasked, layers, rem, x[:16], min_rows=4.0,
                               skipped=skipped)
    # fc1: 16 kept inputs + bias = 17 unknowns > 16 / 4; the head: 13 > 4; fc2: 7 > 4.
    assert skipped == ["block2/block/2/fc1", "block2/block/2/fc2", "head"], skipped
    fc1 = ("params", "block2", "block", "2", "fc1", "kernel")
    proj = ("params", "block2", "block", "3", "0", "kernel")
    flat_got, flat_comp = obs.flat_variables(got), obs.flat_variables(case.unmasked)
    np.testing.assert_array_equal(flat_got[fc1], flat_comp[fc1])
    assert not np.array_equal(flat_got[proj], flat_comp[proj])  # 16 images x 49 pixels: refit
    everything: list = []
    again = obs.refit_sequential(p.module, p.variables, case.unmasked, layers, rem, x[:16], min_rows=0.0,
                                 skipped=everything)
    assert everything == [] and not np.array_equal(obs.flat_variables(again)[fc1], flat_comp[fc1])


def test_the_method_reports_the_layers_it_did_not_refit(data, efficient):
    """``prune('hobs')`` end to end on the squeeze-excitation network from 16 calibration
    images: the pooled-input layers (SE FCs, the classifier) keep their OBS compensation
    and are named in ``info['not_refit']``; the target is met and the network is smaller."""
    from hobs_jax.methods import Calibration, prune

    x, _ = data
    p = efficient[0]
    calib = Calibration(x[:16], np.zeros(16, np.int32))
    r = prune("hobs", p, target=0.5, calib=calib,
              options=dict(progress=False, allocation="uniform", calib_batch_size=16))
    assert abs(r.macs_ratio / 0.5 - 1) <= 0.01
    skipped = r.outcome.info["not_refit"]
    assert "head" in skipped and any(s.endswith("fc1") for s in skipped), skipped
    assert not any(s.endswith(("block/0/0", "block/3/0")) for s in skipped), skipped  # convs: a row per pixel
    assert r.params_ratio < 1
