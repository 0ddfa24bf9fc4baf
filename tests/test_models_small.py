"""The zoo's small-image forms (``mobilenet_v2_small``, ``efficientnet_b0_small``,
``vit_tiny_p4``): the stride changes on both the Flax and the torch side, bad input,
MACs by hand, and surgery at reduced widths. Shape-level and cheap (no compile of the
CNNs); the numerical parity is tests/test_parity.py's, the group checks tests/test_graph.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hobs_jax import graph as G
from hobs_jax import macs, models
from hobs_jax.models.layers import STAGE_SUFFIX
from parity.check import stage_map
from parity.torch_models import build_torch

SMALL = ("mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")
# Spatial side of each stage output on a 28x28 input: stride-1 stem and stage 2, then
# stride 2 at stages 3, 4 and 6 (28 -> 14 -> 7 -> 4).
MBV2_SIDES = {0: 28, 1: 28, 2: 28, 3: 28, 4: 14, 6: 14, 7: 7, 10: 7, 11: 7, 14: 4, 17: 4, 18: 4}
B0_SIDES = {0: 28, 1: 28, 2: 28, 3: 14, 4: 7, 5: 7, 6: 4, 7: 4, 8: 4}


def _flax_stage_shapes(name, shape):
    model = models.build(name)
    v = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
    _, state = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), mutable=["intermediates"]), v)
    return {str(path[-2].key).removesuffix(STAGE_SUFFIX): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}


@pytest.mark.parametrize("name,sides", [("mobilenet_v2_small", MBV2_SIDES), ("efficientnet_b0_small", B0_SIDES)])
def test_stride_one_stem_and_stage_2_keep_28x28_in_flax_and_torch(name, sides):
    """Flax stage outputs have the sides of the literature's CIFAR form, and torch's
    reference (torchvision with the same strides changed) has the same shape at every stage."""
    entry = models.get_entry(name)
    assert (entry.input_size, entry.in_channels, entry.num_classes) == (28, 1, 10)
    flax_shapes = _flax_stage_shapes(name, (1, 28, 28, 1))
    for i, side in sides.items():
        assert flax_shapes[f"features.{i}"][1:3] == (side, side), (i, flax_shapes[f"features.{i}"])
    ref, captured = build_torch(name), {}
    for stage, path in stage_map(name).items():
        ref.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, stage=stage: captured.__setitem__(stage, tuple(out.shape)))
    with torch.no_grad():
        assert tuple(ref(torch.zeros(1, 1, 28, 28)).shape) == (1, 10)
    assert captured and all(captured[s] == (f[0], f[3], f[1], f[2]) for s, f in flax_shapes.items()
                            if s in captured), (captured, flax_shapes)
    # the ImageNet form at the same input halves the stem (stride 2): the variants differ
    imagenet = _flax_stage_shapes(name.removesuffix("_small"), (1, 28, 28, 3))
    assert imagenet["features.0"][1:3] == (14, 14)


@pytest.mark.parametrize("name", ["mobilenet_v2_small", "efficientnet_b0_small"])
def test_input_below_the_total_stride_is_refused_in_one_line(name):
    model = models.build(name)
    v = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, 28, 28, 1)))
    with pytest.raises(ValueError, match=f"{name}: input spatial size 7x28 is too small, need at least 8x8") as e:
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 7, 28, 1))), v)
    assert "\n" not in str(e.value)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 8, 8, 1))), v)  # the smallest accepted
    assert out.shape == (2, 10)


def test_vit_tiny_p4_tokens_widths_and_wrong_size():
    model = models.build("vit_tiny_p4")
    assert (model.patch_size, model.image_size, model.num_layers, model.scale_dim) == (4, 28, 6, 32)
    v = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, 28, 28, 1)))
    assert v["params"]["encoder"]["pos_embedding"].shape == (1, 7 * 7 + 1, 192)
    assert v["params"]["conv_proj"]["kernel"].shape == (4, 4, 1, 192)
    q = v["params"]["encoder"]["layers"]["encoder_layer_5"]["self_attention"]["query"]["kernel"]
    assert q.shape == (192, 6, 32)
    with pytest.raises(ValueError, match="spatial size 32x32, expected 28x28"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 1))), v)


def test_macs_of_the_stride_one_layers_by_hand():
    """Stem and stage-2 depthwise convs at 28x28 (stride 1) cost what the conv formula says,
    4x what the ImageNet form's stride-2 versions cost at the same input."""
    small = {l.path: l.macs for l in macs.count_zoo("mobilenet_v2_small").layers}
    big = {l.path: l.macs for l in macs.count_zoo("mobilenet_v2", in_channels=1, size=28, num_classes=10).layers}
    assert small["features/0/0"] == 28 * 28 * 32 * 1 * 9
    assert small["features/2/conv/1/0"] == 28 * 28 * 96 * 9  # depthwise: one input channel per output
    assert big["features/0/0"] * 4 == small["features/0/0"]
    vit = macs.count_zoo("vit_tiny_p4")
    layers = {l.path: l.macs for l in vit.layers}
    assert layers["conv_proj"] == 49 * 192 * 16
    assert layers["encoder/layers/encoder_layer_0/mlp/0"] == 50 * 192 * 384
    assert round(vit.macs / 1e6, 1) == 94.4 and vit.params == 1_797_514


@pytest.mark.parametrize("name", SMALL)
def test_surgery_at_reduced_widths_gives_the_zoo_model_at_those_widths(name):
    """A random plan cuts every prunable group; the pruned model is the registry model at
    the new widths (shapes, MACs, params) and runs (shape-evaluated)."""
    model = models.build(name)
    shape = models.input_shape(name, 2)
    v = models.random_variables(model, shape, seed=0)
    g = G.build_graph(model, v)
    plan = G.random_plan(g, seed=1)
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    widths, nc, ic = models.infer_widths(name, pv)
    assert (nc, ic) == (10, 1) and widths == dict(pm.widths)
    assert any(widths[k] < v0 for k, v0 in models.default_widths(name).items())
    out = jax.eval_shape(lambda v: pm.apply(v, jnp.zeros(shape)), pv)
    assert out.shape == (2, 10)
    rep, zoo = macs.count(pm, pv, shape), macs.count_zoo(name, widths=widths)
    assert (rep.macs, rep.params) == (zoo.macs, zoo.params)
    assert rep.macs < macs.count_zoo(name).macs
    assert rep.params == sum(np.size(a) for a in jax.tree.leaves(pv["params"]))
