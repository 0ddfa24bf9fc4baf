"""The Torch-Pruning rows of the one-shot study (hobs_jax.experiments.studies.oneshot_tp):
TP's own pruners, bisected to our MACs target, converted back to Flax.

ViT: TP's whole-head pruning on the zoo's ``vit_tiny_p4`` at random init (the smallest
zoo ViT; ``vit_b_16`` is 224x224): the MACs target is met within 1%, heads go whole (the
head dim stays 32), the residual width stays, and the Flax model equals TP's pruned torch
model. ResNet: the channel-pruning path the study already used is unchanged.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import macs, models
from hobs_jax.experiments.studies import oneshot_tp

VIT, VIT_SHAPE = "vit_tiny_p4", (1, 28, 28, 1)


@functools.cache
def _vit():
    model = models.build(VIT)
    variables = models.random_variables(model, VIT_SHAPE, seed=0)
    return model, variables, oneshot_tp.prune(VIT, variables, 0.5, "l1", False, VIT_SHAPE)


@pytest.mark.slow
def test_vit_heads_are_pruned_whole_to_the_macs_target():
    pytest.importorskip("torch_pruning")
    model, variables, out = _vit()
    assert out["within_tol"] and abs(out["macs_ratio"] / 0.5 - 1) <= 0.01, out["attempts"]
    dense_w = models.infer_widths(VIT, variables)[0]
    widths, nc, ic = models.infer_widths(VIT, out["variables"])
    assert out["scale_dim"] == 32 and (nc, ic) == (10, 1)
    pruned = models.build(VIT, widths=widths, num_classes=nc, in_channels=ic, scale_dim=out["scale_dim"])
    ratio = macs.count(pruned, out["variables"], VIT_SHAPE).macs / macs.count(model, variables, VIT_SHAPE).macs
    assert ratio == pytest.approx(out["macs_ratio"], rel=1e-12)
    assert widths["hidden"] == dense_w["hidden"] == 192  # the residual stream is ignored
    for i in range(6):
        e = f"encoder_layer_{i}"
        assert 0 < widths[f"{e}.heads"] < dense_w[f"{e}.heads"] == 6  # whole heads removed
        assert widths[f"{e}.qk_dim"] == widths[f"{e}.v_dim"] == 32  # head dim unchanged
        assert 0 < widths[f"{e}.mlp"] < dense_w[f"{e}.mlp"] == 384


@pytest.mark.slow
def test_vit_flax_model_equals_torch_prunings_pruned_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from parity.convert import flax_to_torch

    _, variables, out = _vit()
    dense_t = flax_to_torch(VIT, variables).float().eval()
    pruned_t = oneshot_tp.tp_prune(dense_t, "l1", out["pruning_ratio"], False, torch.zeros(1, 1, 28, 28)).eval()
    heads = [a.num_heads for a in pruned_t.modules() if hasattr(a, "qkv")]
    widths, nc, ic = models.infer_widths(VIT, out["variables"])
    assert heads == [widths[f"encoder_layer_{i}.heads"] for i in range(6)]
    x = np.random.RandomState(1).normal(size=(4, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        ref = pruned_t(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = models.build(VIT, widths=widths, num_classes=nc, in_channels=ic, scale_dim=out["scale_dim"])
    got = np.asarray(model.apply(out["variables"], jnp.asarray(x), train=False))
    assert np.abs(ref).max() > 0.1  # a non-trivial function (the head is random, not zero)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_vit_refuses_the_bn_scale_criterion_in_one_line():
    variables = models.random_variables(models.build(VIT), VIT_SHAPE, seed=0)
    with pytest.raises(ValueError, match="'bnscale'.*a ViT has none"):
        oneshot_tp.prune(VIT, variables, 0.5, "bnscale", False, VIT_SHAPE)


@pytest.mark.slow
def test_resnet_channel_pruning_meets_the_target_and_keeps_the_classes():
    pytest.importorskip("torch_pruning")
    shape = (1, 16, 16, 1)
    model = models.build("resnet20", num_classes=10, in_channels=1)
    variables = models.random_variables(model, shape, seed=0)
    out = oneshot_tp.prune("resnet20", variables, 0.5, "l1", False, shape)
    assert out["within_tol"] and out["scale_dim"] is None, out["attempts"]
    widths, nc, ic = models.infer_widths("resnet20", out["variables"])
    dense_w = models.infer_widths("resnet20", variables)[0]
    assert (nc, ic) == (10, 1) and all(widths[k] <= dense_w[k] for k in dense_w)
    assert any(widths[k] < dense_w[k] for k in dense_w)


def test_split_bisects_the_number_of_layers_that_take_the_higher_ratio():
    """Pure: kept MACs fall by 0.01 per layer moved to the higher ratio; the bisection
    finds the k that lands within tolerance, and treats an emptied attempt as too many."""
    def attempt(k):
        return (None, None, None) if k > 40 else (0.40 - 0.01 * k, f"v{k}", None)

    k, r, v, sd, tried = oneshot_tp._split(attempt, 50, 0.333, 0.01)
    assert k == 7 and v == "v7" and abs(r / 0.333 - 1) <= 0.01 and sd is None
    assert tried[0] == (25, pytest.approx(0.15)) and len(tried) <= 6
    assert oneshot_tp._split(lambda k: (None, None, None), 50, 0.333, 0.01) is None


def test_layer_ratios_reach_torch_prunings_own_per_layer_ratios():
    """``tp_prune(..., layer_ratios=)`` hands those layers another ratio through TP's
    ``pruning_ratio_dict``: the named stage-3 convs lose more channels than the others."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from parity.convert import flax_to_torch, torch_to_flax

    model = models.build("resnet20", num_classes=10, in_channels=1)
    dense_t = flax_to_torch("resnet20", models.random_variables(model, (1, 16, 16, 1), seed=0)).float().eval()
    names = ["layer3.0.conv1", "layer3.1.conv1"]
    pruned = oneshot_tp.tp_prune(dense_t, "l1", 0.25, False, torch.zeros(1, 1, 16, 16),
                                 layer_ratios=dict.fromkeys(names, 0.5))
    widths = models.infer_widths("resnet20", torch_to_flax("resnet20", pruned)[1])[0]
    assert widths["layer3.0.conv1"] == widths["layer3.1.conv1"] == 32
    assert widths["layer3.2.conv1"] == 48 and widths["layer2.0.conv1"] == 24
    assert oneshot_tp._prunable_layers(dense_t)[:2] == ["conv1", "layer1.0.conv1"]
    assert "fc" not in oneshot_tp._prunable_layers(dense_t)


@pytest.mark.slow
def test_local_pruning_splits_the_ratio_where_every_layer_steps_at_once():
    """ResNet-20's 16/32/64 channels all step at ratio 13/32 (0.340 -> 0.323 of the MACs):
    no single ratio lands within 1% of 1/3, so the first layers take the ratio above the
    jump; every layer is still cut by one ratio up to a channel."""
    pytest.importorskip("torch_pruning")
    shape = (1, 16, 16, 1)
    model = models.build("resnet20", num_classes=10, in_channels=1)
    variables = models.random_variables(model, shape, seed=0)
    out = oneshot_tp.prune("resnet20", variables, 0.333, "l1", False, shape)
    assert out["within_tol"] and out["split"] is not None, out["attempts"]
    assert all(abs(r / 0.333 - 1) > 0.01 for _, r in out["attempts"] if r is not None)
    assert out["split"]["ratio"] > out["pruning_ratio"] and out["split"]["layers"][0] == "conv1"
    widths = models.infer_widths("resnet20", out["variables"])[0]
    dense = models.infer_widths("resnet20", variables)[0]
    for size in (16, 32, 64):  # layers of one dense width differ by at most one channel
        kept = [widths[k] for k in dense if dense[k] == size]
        assert max(kept) - min(kept) <= 1, (size, kept)


def test_qkv_layout_computes_what_torchvision_attention_computes():
    torch = pytest.importorskip("torch")
    from parity.qkv_attention import QKVAttention, to_head_attention, to_qkv_attention
    from parity.torch_models import HeadAttention, build_torch

    net = build_torch(VIT, num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
        attn = to_qkv_attention(net)
        assert [type(a) for a in attn] == [QKVAttention] * 6 and attn[0].qkv.weight.shape == (576, 192)
        assert torch.allclose(net(x), ref, rtol=1e-5, atol=1e-6)
        to_head_attention(net)
        assert sum(isinstance(m, HeadAttention) for m in net.modules()) == 6
        assert torch.allclose(net(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="qk_dim 8 != v_dim 4"):
        to_qkv_attention(torch.nn.Sequential(HeadAttention(16, 2, 8, 4, 8)))


@pytest.mark.slow
def test_vit_attempt_that_empties_a_layer_of_heads_is_caught():
    """Global head ranking can take every head of a layer; the bisection must treat that
    attempt as over-pruned (oneshot_tp.prune moves the ratio down) rather than convert it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from parity.convert import flax_to_torch

    _, variables, _ = _vit()
    dense_t = flax_to_torch(VIT, variables).float().eval()
    pruned = oneshot_tp.tp_prune(dense_t, "l1", 0.95, True, torch.zeros(1, 1, 28, 28))
    heads = [a.num_heads for a in pruned.modules() if hasattr(a, "qkv")]
    assert 0 in heads
    assert "has no heads left" in oneshot_tp._emptied(pruned)


@pytest.mark.parametrize("name,path", [("mobilenet_v2_small", "classifier.1"),
                                       ("efficientnet_b0_small", "classifier.1")])
def test_the_classifier_kept_whole_is_the_last_linear_of_any_cnn(name, path):
    pytest.importorskip("torch_pruning")
    from parity.convert import flax_to_torch

    model = models.build(name, num_classes=10, in_channels=1)
    m = flax_to_torch(name, models.random_variables(model, (1, 16, 16, 1), seed=0))
    assert oneshot_tp._classifier(m) is m.get_submodule(path)


@pytest.mark.slow
def test_mobilenet_v2_channel_pruning_meets_the_target():
    """Torch-Pruning's global L1 pruning of the small-image MobileNetV2 (depthwise groups
    pruned with the convs that feed them), bisected to half our MACs count."""
    pytest.importorskip("torch_pruning")
    shape = (1, 16, 16, 1)
    model = models.build("mobilenet_v2_small", num_classes=10, in_channels=1)
    variables = models.random_variables(model, shape, seed=0)
    out = oneshot_tp.prune("mobilenet_v2_small", variables, 0.5, "l1", True, shape)
    assert out["within_tol"], out["attempts"]
    widths, nc, _ = models.infer_widths("mobilenet_v2_small", out["variables"])
    dense_w = models.infer_widths("mobilenet_v2_small", variables)[0]
    assert nc == 10 and any(widths[k] < dense_w[k] for k in dense_w)
