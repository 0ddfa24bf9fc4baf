"""Pruning networks the zoo does not contain, written with hard-coded widths (no width
fields), linen and NNX (hobs_jax/testing): DenseNet growth, ShuffleNet split + shuffle,
ResNeXt grouped convs, ConvNeXt (LayerNorm, depthwise 7x7, MLP, layer scale), MBConv
(squeeze-excitation, hard-swish), a ViT on MultiHeadDotProductAttention; MBConv and ViT
in NNX too.

For each, H-OBS and magnitude (and UDFC, or its one-line refusal):
  * the result is a physically smaller network (every pruned array smaller, fewer MACs);
  * its MACs meet the target within 1%;
  * its output equals the masked reference (``graph.mask_variables``) for every
    mask-exact group the plan prunes (float32 rounding);
H-OBS runs with ``propagate=0`` (no sequential refit) on all but two of them to keep the
test cheap; the refit's own behaviour is tested on the zoo (tests/test_hobs_refit.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import graph as G
from hobs_jax import macs, methods
from hobs_jax.testing.init import random_linen, random_nnx
from hobs_jax.testing.nets import LINEN_NETS
from hobs_jax.testing.nnx_nets import NNX_NETS
from tests._tiny import enable_compile_cache

enable_compile_cache()

SHAPE = (1, 16, 16, 1)
NETS = list(LINEN_NETS) + list(NNX_NETS)
FULL_HOBS = ("resnext", "mbconv_nnx")  # H-OBS with its default options (the sequential refit on)


@functools.lru_cache(maxsize=None)
def _net(name):
    """(the model argument of methods.prune, variables or None)."""
    if name in LINEN_NETS:
        m = LINEN_NETS[name]()
        return m, random_linen(m, SHAPE, seed=1)
    return random_nnx(NNX_NETS[name], seed=1), None


@functools.lru_cache(maxsize=None)
def _calib():
    rng = np.random.default_rng(0)
    return methods.Calibration(rng.normal(size=(16,) + SHAPE[1:]).astype(np.float32),
                               rng.integers(0, 10, 16).astype(np.int32))


def _leaf_shapes(tree):
    return {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_result(r, target):
    task = r.task
    assert abs(r.macs_ratio / target - 1) <= 0.01, r.macs_ratio
    before, after = _leaf_shapes(task.variables), _leaf_shapes(r.variables)
    assert set(before) == set(after)
    assert all(all(a <= b for a, b in zip(after[k], before[k])) for k in before)
    assert sum(np.prod(s) for s in after.values()) < sum(np.prod(s) for s in before.values())
    assert macs.count(r.prunable).macs < macs.count(task.prunable).macs
    # Pruned == masked on the mask-exact groups the plan prunes (the compensated variables).
    g = task.graph
    exact = {gid: idx for gid, idx in r.outcome.plan.keep
             if g.group(gid).mask_exact and len(idx) < g.group(gid).size}
    full = task.prunable.with_variables(r.outcome.variables)
    sub = G.make_plan(g, exact)
    small = G.apply_plan(full, sub, graph=g)
    x = jnp.asarray(_calib().images[:4])
    ref = np.asarray(full.module.apply(G.mask_variables(g, full.variables, sub), x))
    out = np.asarray(small.module.apply(small.variables, x))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), (len(exact), np.abs(out - ref).max())
    return exact


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_hobs_and_magnitude_prune_any_network(name):
    model, variables = _net(name)
    calib = _calib()
    opts = dict(progress=False, calib_batch_size=16)
    if name not in FULL_HOBS:
        opts["propagate"] = 0
    r = methods.prune("hobs", model, variables, target=0.5, calib=calib, options=opts)
    exact = _check_result(r, 0.5)
    assert r.task.name.endswith(type(model).__name__)
    m = methods.prune("magnitude", model, variables, target=0.5, input_shape=SHAPE)
    _check_result(m, 0.5)
    if name == "densenet":  # concatenated channels: several groups feed one layer
        assert any(len(g.members) > 4 for g in r.task.graph.prunable) and exact
    if name.endswith("nnx"):  # the pruned network is an ordinary NNX module of the same output
        small = r.nnx
        small.eval()
        x = calib.images[:2]
        np.testing.assert_allclose(np.asarray(small(x)), np.asarray(r.model.apply(r.variables, x)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NETS)
def test_udfc_runs_or_refuses_in_one_line(name):
    model, variables = _net(name)
    scope = "all" if name == "densenet" else "compensable"
    task = methods.make_task("udfc", model, variables, target=0.5, input_shape=SHAPE, options=dict(scope=scope))
    if task.graph.activations != ("relu",):
        with pytest.raises(ValueError, match=r"udfc: .* not ReLU alone; UDFC's ReLU moments need BN then ReLU"):
            methods.run("udfc", task)
        return
    if name == "densenet":  # one compensable chain (transition conv -> BN -> ReLU -> head); prune all groups
        r = methods.run("udfc", task)
        _check_result(r, 0.5)
        assert r.outcome.info["compensated"]
        return
    with pytest.raises(ValueError, match=r"udfc: .* has no compensable group \(conv-BN-ReLU-conv\)") as e:
        methods.run("udfc", task)
    assert "\n" not in str(e.value)


def test_split_halves_stay_equal_and_shuffle_is_refused_in_one_line():
    """ShuffleNet's jnp.split(x, 2): both halves are one group (channel c of each half
    goes with channel c of the other), so every plan keeps them equal and the module
    runs at the pruned width. Through the channel shuffle the stream cannot be cut at
    all (listed not prunable); a plan that tries is refused in one line."""
    from hobs_jax.testing.nets import ShuffleNetTiny

    m = ShuffleNetTiny(shuffle=False)
    v = random_linen(m, SHAPE)
    p = G.prunable(m, v, SHAPE)
    g = G.graph_of(p)
    stream = next(grp for grp in g.groups if grp.members[0].name == "Conv_0/kernel")
    assert stream.prunable and stream.size == 8  # half of the 16-channel stem
    stem = next(mem for mem in stream.members if mem.name == "Conv_0/kernel")
    assert (stem.index_map.repeat, stem.index_map.repeat_stride) == (2, 8)
    plan = G.make_plan(g, {stream.id: (0, 3, 5)})
    small = G.apply_plan(p, plan, graph=g)
    assert small.variables["params"]["Conv_0"]["kernel"].shape[-1] == 6  # both halves keep 3
    x = jnp.asarray(_calib().images[:2])
    ref = p.module.apply(G.mask_variables(g, p.variables, plan), x)
    np.testing.assert_allclose(small.module.apply(small.variables, x), ref, rtol=1e-5, atol=1e-6)

    shuffled = ShuffleNetTiny()
    ps = G.prunable(shuffled, random_linen(shuffled, SHAPE), SHAPE)
    gs = G.graph_of(ps)
    s = next(grp for grp in gs.groups if grp.members[0].name == "Conv_0/kernel")
    assert not s.prunable and "mixes a concatenated axis with a reshaped one" in s.reason
    with pytest.raises(ValueError, match=rf"group {s.id} \(params/Conv_0/kernel axis 3\) is not prunable: "
                                         r"reshape at ShuffleUnit_0 mixes"):
        G.apply_plan(ps, G.PrunePlan(gs.model, gs.fingerprint, {s.id: (0, 1)}), graph=gs)
    assert any(grp.prunable for grp in gs.groups)  # the units' inner widths still are


def test_pruned_nnx_module_keeps_training_with_nnx_optimizer():
    import optax
    from flax import nnx

    from hobs_jax.testing.nnx_nets import MBConvNetNNX

    model = random_nnx(MBConvNetNNX, seed=2)
    g = G.build_graph(model, input_shape=SHAPE)
    plan = G.random_plan(g, 0, min_ratio=0.4, max_ratio=0.7)
    small = G.apply_plan(model, plan, graph=g)
    assert isinstance(small, MBConvNetNNX) and small.blocks[0].expand.out_features < 64
    assert small.blocks[0].dw.feature_group_count == small.blocks[0].expand.out_features
    small.train()
    opt = nnx.Optimizer(small, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    x, y = jnp.asarray(_calib().images), jnp.asarray(_calib().labels)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(small, opt)) for _ in range(5)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert small.blocks[0].expand.kernel.get_value().shape[-1] == small.blocks[0].expand.out_features


# -- bad input: one line, nothing built --------------------------------------------------

def test_variables_that_do_not_match_the_module():
    from hobs_jax.testing.nets import ResNeXtTiny

    m = ResNeXtTiny()
    v = random_linen(m, SHAPE)
    missing = {"params": {k: x for k, x in v["params"].items() if k != "Dense_0"}, "batch_stats": v["batch_stats"]}
    with pytest.raises(ValueError, match=r"variables do not match hobs_jax.testing.nets.ResNeXtTiny: "
                                         r"missing params/Dense_0/bias \(\+1 more\)"):
        G.prunable(m, missing, SHAPE)
    extra = {"params": dict(v["params"], Extra_0={"kernel": np.zeros((2, 2))}), "batch_stats": v["batch_stats"]}
    with pytest.raises(ValueError, match=r"unexpected params/Extra_0/kernel"):
        G.prunable(m, extra, SHAPE)
    bad = jax.tree.map(lambda a: a, v)
    bad["params"]["Conv_0"]["kernel"] = np.zeros((3, 3, 2, 16), np.float32)  # 2 input channels, data has 1
    with pytest.raises(ValueError, match=r"ResNeXtTiny: does not run on these variables at layer Conv_0: "
                                         r"ScopeParamShapeError"):
        G.prunable(m, bad, SHAPE)
    with pytest.raises(ValueError, match=r"input_shape is required for a module outside the zoo"):
        G.prunable(m, v)


def test_width_the_rebuild_cannot_follow_names_the_layer():
    import flax.linen as nn

    class FixedScale(nn.Module):  # a layer scale created with a literal width
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3), padding=1)(x)
            x = x * self.param("gamma", nn.initializers.ones, (8,))
            return nn.Dense(10)(nn.relu(nn.Dense(12)(x.mean(axis=(1, 2)))))

    m = FixedScale()
    v = random_linen(m, SHAPE)
    g = G.build_graph(m, v, SHAPE)
    conv = next(grp for grp in g.groups if grp.members[0].name == "Conv_0/kernel")
    assert not conv.prunable
    assert conv.reason.startswith("not followable: rebuilt at other widths fails at layer FixedScale: "
                                  "ScopeParamShapeError: For parameter \"gamma\"")
    hidden = next(grp for grp in g.groups if grp.size == 12)
    assert hidden.prunable  # the rest of the network is still prunable
    with pytest.raises(ValueError, match=rf"group {conv.id} \(params/Conv_0/kernel axis 3\) is not prunable: "
                                         r"not followable"):
        G.apply_plan(m, v, G.PrunePlan(g.model, g.fingerprint, {conv.id: (0, 1, 2)}), graph=g)


def test_nnx_shared_weights_are_refused():
    from flax import nnx

    class Tied(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 4, rngs=rngs)
            self.b = nnx.Linear(4, 4, rngs=rngs)
            self.b.kernel = self.a.kernel  # tied across two layers

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    with pytest.raises(ValueError, match=r"NNX variables a/kernel and b/kernel are one shared array \(tied weights\)"):
        G.prunable(Tied(nnx.Rngs(0)), input_shape=(1, 4))


def test_plan_for_another_model_and_unsupported_primitive():
    from hobs_jax.testing.nets import ConvNeXtTiny, DenseNetTiny

    a, b = DenseNetTiny(), ConvNeXtTiny()
    ga = G.build_graph(a, random_linen(a, SHAPE), SHAPE)
    vb = random_linen(b, SHAPE)
    with pytest.raises(ValueError, match=r"plan is for model 'hobs_jax.testing.nets.DenseNetTiny', "
                                         r"not 'hobs_jax.testing.nets.ConvNeXtTiny'"):
        G.apply_plan(b, vb, G.random_plan(ga, 0), input_shape=SHAPE)

    import flax.linen as nn

    class Spectral(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.Conv(6, (3, 3), padding=1)(x)
            y = jnp.fft.fft(y, axis=-1).real
            return nn.Dense(3)(y.mean(axis=(1, 2)))

    s = Spectral()
    with pytest.raises(ValueError, match=r"\(6 channels at Conv_0/kernel axis 3\): unsupported primitive 'fft' at "
                                         r"Spectral"):
        G.build_graph(s, random_linen(s, SHAPE), SHAPE, strict=True)
