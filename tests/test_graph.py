"""The channel graph on every zoo model: groups, ids, kinds, members, the CLI."""

import jax
import pytest

from hobs_jax import graph as G
from hobs_jax import models

ZOO = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet20", "resnet56", "mobilenet_v2",
       "efficientnet_b0", "vit_b_16", "mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")


def _abstract(name):
    model = models.build(name)
    shape = models.input_shape(name, 1)
    return model, jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))


@pytest.mark.parametrize("name", ZOO)
def test_groups_are_exactly_the_zoo_width_entries(name):
    """Derived from the jaxpr alone, the prunable groups coincide one to one with the
    width entries the zoo declares by hand; input channels and logits are pinned."""
    model, v = _abstract(name)
    g = G.build_graph(model, v)
    widths = models.default_widths(name)
    assert all(len(grp.widths) == 1 for grp in g.prunable), [grp.widths for grp in g.prunable]
    assert sorted(grp.widths[0] for grp in g.prunable) == sorted(widths)
    assert all(grp.size == widths[grp.widths[0]] for grp in g.prunable)
    pinned = {grp.widths: grp.reason for grp in g.groups if not grp.prunable}
    # a one-channel input (the small-image forms' Fashion-MNIST) has no channel axis to pin
    one_channel = models.get_entry(name).in_channels == 1
    assert set(pinned) == {("@num_classes",)} | (set() if one_channel else {("@in_channels",)})
    assert one_channel or "input's channel axis" in pinned[("@in_channels",)]
    assert "logits" in pinned[("@num_classes",)]
    assert (len(g.prunable), g.channels) == (len(widths), sum(widths.values()))
    assert g.dump().splitlines()[-1] == f"{len(widths)} groups, {sum(widths.values())} channels"


def test_group_ids_are_deterministic_and_topological():
    model, v = _abstract("resnet50")
    a, b = G.build_graph(model, v), G.build_graph("resnet50")
    assert a == b and a.fingerprint == b.fingerprint
    order = [grp.widths[0] for grp in a.groups]
    assert order[:4] == ["@in_channels", "conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert order.index("layer1") < order.index("layer2.0.conv1")
    assert order[-1] == "@num_classes" and [grp.id for grp in a.groups] == list(range(len(order)))


def test_vit_group_kinds_and_members():
    g = G.build_graph("vit_b_16")
    hidden = g.by_width("hidden")
    assert hidden.kind == "residual" and not hidden.mask_exact  # LayerNorm statistics
    assert any("ln_1" in n for n in hidden.notes)
    names = {(m.name, m.axis) for m in hidden.members}
    assert {("class_token", 2), ("encoder/pos_embedding", 2), ("conv_proj/kernel", 3),
            ("heads/head/kernel", 0)} <= names
    heads = g.by_width("encoder_layer_3.heads")
    pre = "encoder/layers/encoder_layer_3/self_attention/"
    assert heads.kind == "heads" and heads.size == 12 and heads.mask_exact
    assert {(m.name, m.axis) for m in heads.members} == {
        (pre + "query/kernel", 1), (pre + "query/bias", 0), (pre + "key/kernel", 1), (pre + "key/bias", 0),
        (pre + "value/kernel", 1), (pre + "value/bias", 0), (pre + "out/kernel", 0)}
    qk = g.by_width("encoder_layer_3.qk_dim")
    assert {(m.name, m.axis) for m in qk.members} == {
        (pre + "query/kernel", 2), (pre + "query/bias", 1), (pre + "key/kernel", 2), (pre + "key/bias", 1)}
    vd = g.by_width("encoder_layer_3.v_dim")
    assert {(m.name, m.axis) for m in vd.members} == {
        (pre + "value/kernel", 2), (pre + "value/bias", 1), (pre + "out/kernel", 1)}
    assert qk.kind == vd.kind == "head_dim"


def test_cli_prints_groups_and_count(capsys):
    from hobs_jax.graph.__main__ import main

    main(["--model", "resnet50"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "37 groups, 11456 channels"
    assert sum(line.lstrip()[:1].isdigit() and " size " in line for line in out) == 39
