"""Plans, bad input, group norms, and graphs of modules outside the zoo (flatten into a
dense layer, channel concatenation, grouped convs, packed multi-head attention,
unsupported primitives, reshapes that mix axes)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import graph as G
from hobs_jax import macs, models
from tests._zoo_vars import random_variables


@pytest.fixture(scope="module")
def r20():
    model = models.build("resnet20", num_classes=10)
    shape = models.input_shape("resnet20", 2)
    v = random_variables(model, shape, seed=0)
    return model, v, G.build_graph(model, v)


# -- plans ------------------------------------------------------------------------------

def test_json_round_trip_and_determinism(r20):
    _, _, g = r20
    a, b = G.random_plan(g, seed=7, round_to=4), G.random_plan(g, seed=7, round_to=4)
    assert a == b and a.removes_any(g)
    back = G.PrunePlan.from_json(a.to_json())
    assert back == a and back.to_json() == a.to_json()
    assert G.random_plan(g, seed=8) != a


def test_plan_from_scores_keeps_top_k_rounded_up(r20):
    _, v, g = r20
    scores = G.group_l2_scores(g, v)
    plan = G.plan_from_scores(g, scores, 0.3, round_to=8)
    for grp in g.prunable:
        kept = plan.kept(grp.id)
        n = len(kept) if kept is not None else grp.size
        want = min(grp.size, -(-max(1, round(0.3 * grp.size)) // 8) * 8)  # up to a multiple of 8
        assert n == want
        if kept is not None:
            s = scores[grp.id]
            assert s[list(kept)].min() >= np.delete(s, kept).max()
    assert G.round_keep(5, 16, 8) == 8 and G.round_keep(17, 20, 8) == 20 and G.round_keep(0, 9, None) == 1


def test_group_l2_scores_match_a_hand_computation(r20):
    _, v, g = r20
    grp = g.by_width("layer2.1.conv1")
    p = v["params"]["layer2"]["1"]
    want = np.sqrt((np.asarray(p["conv1"]["kernel"], np.float64) ** 2).sum(axis=(0, 1, 2))
                   + np.asarray(p["bn1"]["scale"], np.float64) ** 2 + np.asarray(p["bn1"]["bias"], np.float64) ** 2
                   + (np.asarray(p["conv2"]["kernel"], np.float64) ** 2).sum(axis=(0, 1, 3)))
    np.testing.assert_allclose(G.group_l2_scores(g, v)[grp.id], want, rtol=1e-12)


def test_uniform_magnitude_search_reaches_half_the_macs(r20):
    """The README recipe: group L2 norms, uniform keep ratio, bisection on MACs."""
    model, v, g = r20
    scores = G.group_l2_scores(g, v)
    shape = (1, 32, 32, 3)
    full = macs.count(model, v, shape).macs

    def macs_at(ratio):
        pm, pv = G.apply_plan(model, v, G.plan_from_scores(g, scores, ratio), graph=g)
        return macs.count(pm, pv, shape).macs

    lo, hi = 0.05, 1.0
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_at(mid) < 0.5 * full else (lo, mid)
    assert abs(macs_at(hi) / full - 0.5) < 0.03


# -- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("keep, match", [
    ({999: (0,)}, r"unknown group 999"),
    ({3: ()}, r"group 3: keeping zero channels would disconnect"),
    ({3: (1, 1, 2)}, r"group 3: duplicate channel index 1"),
    ({3: (4, 2)}, r"group 3: channel indices are not sorted \(4 before 2\)"),
    ({3: (0, 99)}, r"group 3 \(.*\) has 16 channels; plan keeps index 99"),
    ({3: (-1, 2)}, r"group 3: negative channel index -1"),
    ({3: (0.5,)}, r"group 3: channel index 0.5 is not an int"),
])
def test_bad_plans_raise_one_line_errors(r20, keep, match):
    model, v, g = r20
    with pytest.raises(ValueError, match=match) as e:
        G.apply_plan(model, v, G.PrunePlan(g.model, g.fingerprint, keep), graph=g)
    assert "\n" not in str(e.value)


def test_round_to_that_cannot_be_met(r20):
    model, v, g = r20
    grp = g.by_width("layer1.0.conv1")
    with pytest.raises(ValueError, match=rf"group {grp.id} \(.*\) keeps 5 of 16 channels, not a multiple of round_to=8"):
        G.make_plan(g, {grp.id: tuple(range(5))}, round_to=8)
    with pytest.raises(ValueError, match=r"round_to must be a positive int"):
        G.PrunePlan(g.model, g.fingerprint, {}, round_to=0)


def test_pinned_group_is_refused(r20):
    model, v, g = r20
    logits = g.by_width("@num_classes")
    with pytest.raises(ValueError, match=rf"group {logits.id} \(params/fc/.*\) is not prunable: tied to the network output's logits"):
        G.apply_plan(model, v, G.PrunePlan(g.model, g.fingerprint, {logits.id: (0, 1)}), graph=g)


def test_plan_for_another_model_or_widths_is_refused(r20):
    model, v, g = r20
    plan = G.random_plan(g, seed=1)
    with pytest.raises(ValueError, match=r"plan is for model 'resnet20', not 'resnet56'"):
        G.apply_plan("resnet56", random_variables(models.build("resnet56"), (1, 32, 32, 3)), plan)
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    with pytest.raises(ValueError, match=r"plan was made for graph .* \(another model or other widths\)"):
        G.apply_plan(pm, pv, plan)
    with pytest.raises(ValueError, match=r"not a version-1 PrunePlan JSON"):
        G.PrunePlan.from_json('{"keep": {}}')
    with pytest.raises(ValueError, match=r"plan JSON is malformed"):
        G.PrunePlan.from_json("{oops")


def test_apply_plan_rebuilds_a_module_outside_the_zoo():
    """No width field: the module's own __call__ runs at the sliced widths."""
    m = _FlattenNet()
    v = m.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    g = G.build_graph(m, v, (1, 4, 4, 2), apply_kwargs={})
    assert g.model == "tests.test_graph_plan._FlattenNet"
    plan = G.make_plan(g, {g.prunable[0].id: (0, 2, 5)})
    small, sv = G.apply_plan(m, v, plan, graph=g)
    assert sv["params"]["conv"]["kernel"].shape == (3, 3, 2, 3) and sv["params"]["fc"]["kernel"].shape == (48, 5)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 2))
    y, ref = small.apply(sv, x), m.apply(G.mask_variables(g, v, plan), x)
    assert float(jnp.abs(y - ref).max()) <= 1e-5 * float(jnp.abs(ref).max())


# -- modules outside the zoo -----------------------------------------------------------

class _FlattenNet(nn.Module):
    """conv(c) -> relu -> flatten [B, H*W*c] -> dense(5)."""

    c: int = 6

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.c, (3, 3), padding=1, name="conv")(x))
        return nn.Dense(5, name="fc")(x.reshape(x.shape[0], -1))


class _ConcatNet(nn.Module):
    """concat(conv_a(a), conv_b(b)) on channels -> conv(c) -> mean -> dense."""

    a: int = 4
    b: int = 5
    c: int = 6

    @nn.compact
    def __call__(self, x):
        y = jnp.concatenate([nn.Conv(self.a, (1, 1), name="conv_a")(x), nn.Conv(self.b, (1, 1), name="conv_b")(x)], -1)
        y = nn.Conv(self.c, (3, 3), padding=1, name="conv_c")(jnp.tanh(y))
        return nn.Dense(3, name="fc")(y.mean(axis=(1, 2)))


class _GroupedNet(nn.Module):
    """conv(2*k1) -> conv(2*k2, feature_group_count=2) -> mean -> dense."""

    k1: int = 4
    k2: int = 3

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(2 * self.k1, (1, 1), name="conv1")(x))
        y = nn.relu(nn.Conv(2 * self.k2, (3, 3), padding=1, feature_group_count=2, name="conv2")(y))
        return nn.Dense(3, name="fc")(y.mean(axis=(1, 2)))


class _PackedAttention(nn.Module):
    """torch-style packed projections: dense(h*d) reshaped to heads, attention, dense."""

    h: int = 3
    d: int = 4
    dv: int = 5

    @nn.compact
    def __call__(self, x):
        b, s, _ = x.shape
        q = nn.Dense(self.h * self.d, name="q")(x).reshape(b, s, self.h, self.d)
        k = nn.Dense(self.h * self.d, name="k")(x).reshape(b, s, self.h, self.d)
        v = nn.Dense(self.h * self.dv, name="v")(x).reshape(b, s, self.h, self.dv)
        p = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, s, self.h * self.dv)
        return nn.Dense(7, name="out")(o)


class _Fft(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.fft.fft(x, axis=-1).real


class _UnsupportedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(6, (3, 3), padding=1, name="conv")(x)
        y = _Fft(name="mixer")(y)
        z = nn.Conv(4, (1, 1), name="side")(x)
        return nn.Dense(3, name="fc")(jnp.concatenate([y, z], -1).mean(axis=(1, 2)))


class _MixNet(nn.Module):
    @nn.compact
    def __call__(self, x):  # [B, 4, 4, 2] -> conv 6 -> [B, 4, 3, 8] (W*C regrouped) -> dense
        y = nn.Conv(6, (1, 1), name="conv")(x)
        y = y.reshape(y.shape[0], 4, 3, 8)
        return nn.Dense(3, name="fc")(y.mean(axis=(1, 2)))


def _masked_equals_rebuilt(module, rebuild, shape, seed=0):
    """Random plan on every prunable group; the module rebuilt at the new sizes on the
    sliced variables must equal the original on the masked variables."""
    x = jax.random.normal(jax.random.key(seed), shape)
    v = module.init(jax.random.key(seed + 1), x)
    # probe=False: these modules are rebuilt from their fields here (the rules under test),
    # not by running them at sliced widths.
    g = G.build_graph(module, v, shape, apply_kwargs={}, probe=False)
    plan = G.random_plan(g, seed=seed + 2, min_ratio=0.4, max_ratio=0.8)
    sliced = G.slice_variables(g, v, plan)
    sizes = {grp.id: len(plan.kept(grp.id) or range(grp.size)) for grp in g.groups}
    small = rebuild(g, sizes)
    y_ref = module.apply(G.mask_variables(g, v, plan), x)
    y = small.apply(sliced, x)
    assert float(jnp.abs(y - y_ref).max()) <= 1e-5 * float(jnp.abs(y_ref).max())
    return g, plan


def test_flatten_into_dense_maps_channels_with_stride():
    g, plan = _masked_equals_rebuilt(_FlattenNet(), lambda g, s: _FlattenNet(c=s[1]), (2, 4, 4, 3))
    assert [grp.size for grp in g.prunable] == [6]
    fc = next(m for m in g.prunable[0].members if m.name == "fc/kernel")
    assert (fc.index_map.stride, fc.index_map.repeat, fc.index_map.repeat_stride) == (1, 16, 6)
    assert plan.removes_any(g)


def test_concatenated_channels_are_separate_groups_at_offsets():
    g, _ = _masked_equals_rebuilt(_ConcatNet(), lambda g, s: _ConcatNet(a=s[1], b=s[2], c=s[3]), (2, 5, 5, 3))
    assert [grp.size for grp in g.prunable] == [4, 5, 6]
    consumer = {grp.size: next(m for m in grp.members if m.name == "conv_c/kernel") for grp in g.prunable[:2]}
    assert consumer[4].index_map.offset == 0 and consumer[5].index_map.offset == 4


def test_grouped_conv_prunes_within_groups_uniformly():
    g, _ = _masked_equals_rebuilt(_GroupedNet(), lambda g, s: _GroupedNet(k1=s[2], k2=s[3]), (2, 5, 5, 3))
    assert [(grp.size, grp.prunable) for grp in g.groups] == [(3, False), (2, False), (4, True), (3, True), (3, False)]
    assert g.groups[1].reason == "number of groups (feature_group_count=2) of conv_general_dilated at conv2"
    per_group_in = next(m for m in g.groups[2].members if m.name == "conv1/kernel").index_map
    assert (per_group_in.repeat, per_group_in.repeat_stride) == (2, 4)  # channel j of each group


def test_packed_attention_heads_and_head_dims():
    g, _ = _masked_equals_rebuilt(_PackedAttention(), lambda g, s: _PackedAttention(h=s[1], d=s[2], dv=s[3]), (2, 6, 8))
    kinds = [(grp.size, grp.kind) for grp in g.prunable]
    assert kinds == [(3, "heads"), (4, "head_dim"), (5, "head_dim")]
    heads_q = next(m for m in g.prunable[0].members if m.name == "q/kernel").index_map
    dim_q = next(m for m in g.prunable[1].members if m.name == "q/kernel").index_map
    assert (heads_q.block, heads_q.stride) == (4, 4)
    assert (dim_q.stride, dim_q.repeat, dim_q.repeat_stride) == (1, 3, 4)
    # Its reshape reads the head count and dims from fields, which a rebuild from the
    # variables cannot change: probed, those groups are listed as not prunable, with
    # the layer and the error.
    m = _PackedAttention()
    v = m.init(jax.random.key(0), jnp.zeros((2, 6, 8)))
    probed = G.build_graph(m, v, (2, 6, 8), apply_kwargs={})
    heads = next(grp for grp in probed.groups if grp.size == 3 and grp.kind == "heads")
    assert not heads.prunable and heads.reason.startswith("not followable: ")
    assert "at layer _PackedAttention: TypeError: cannot reshape" in heads.reason, heads.reason


def test_unsupported_primitive_makes_its_group_non_prunable():
    m = _UnsupportedNet()
    v = m.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    g = G.build_graph(m, v, (1, 4, 4, 2), apply_kwargs={})
    conv = next(grp for grp in g.groups if grp.members[0].name == "conv/kernel" and grp.size == 6)
    assert not conv.prunable and conv.reason == "unsupported primitive 'fft' at mixer"
    side = next(grp for grp in g.groups if grp.members[0].name == "side/kernel" and grp.size == 4)
    assert side.prunable
    with pytest.raises(ValueError, match=rf"group {conv.id} \(params/conv/kernel axis 3\) is not prunable: "
                                         r"unsupported primitive 'fft' at mixer"):
        G.slice_variables(g, v, G.PrunePlan(g.model, g.fingerprint, {conv.id: (0, 1)}))
    with pytest.raises(ValueError, match=rf"group {conv.id} \(6 channels at conv/kernel axis 3\): "
                                         r"unsupported primitive 'fft' at mixer"):
        G.build_graph(m, v, (1, 4, 4, 2), apply_kwargs={}, strict=True)


def test_reshape_that_mixes_channels_is_not_prunable():
    m = _MixNet()
    v = m.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    g = G.build_graph(m, v, (1, 4, 4, 2), apply_kwargs={})
    conv = next(grp for grp in g.groups if grp.members[0].name == "conv/kernel" and grp.size == 6)
    assert not conv.prunable and conv.reason.startswith("reshape at _MixNet mixes axes")
    assert not g.prunable or all(grp.members[0].name != "conv/kernel" for grp in g.prunable)


@jax.custom_vjp
def _tanh(x):
    return jnp.tanh(x)


_tanh.defvjp(lambda x: (_tanh(x), x), lambda x, g: (g,))


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _tanh(nn.relu(nn.Dense(6, name="d")(x)))


class _CallNet(nn.Module):
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        block = nn.remat(_Block) if self.remat else _Block
        return nn.Dense(3, name="o")(block(name="b")(x))  # relu is custom_jvp around a jit


def test_tracer_recurses_into_custom_vjp_jit_and_remat():
    graphs = []
    for remat in (False, True):
        m = _CallNet(remat)
        v = m.init(jax.random.key(0), jnp.zeros((1, 4)))
        graphs.append(G.build_graph(m, v, (1, 4), apply_kwargs={}))
    plain, remat = graphs
    assert plain.fingerprint == remat.fingerprint
    assert [(grp.size, grp.prunable) for grp in remat.groups] == [(4, False), (6, True), (3, False)]
