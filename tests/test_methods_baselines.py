"""depgraph and udfc beyond the common contract: faithfulness to Torch-Pruning's
regularizer, UDFC's closed-form moments and compensation, and one-line bad-input errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from hobs_jax import models
from hobs_jax.graph import apply_plan, build_graph, make_plan
from hobs_jax.methods import make_task, run
from hobs_jax.methods.depgraph import group_norm_regularizer
from hobs_jax.methods.udfc import (bivariate_cdf, compensation, find_chains, fold, relu_gram,
                                   restrict)

NAME, SHAPE = "resnet20", (1, 16, 16, 1)


@functools.lru_cache(maxsize=None)
def _model():
    model = models.build(NAME, num_classes=10, in_channels=1)
    variables = models.random_variables(model, SHAPE, seed=0)
    return model, variables, build_graph(model, variables, SHAPE, name=NAME)


def _task(method, **options):
    _, variables, graph = _model()
    return make_task(method, NAME, variables, target=0.5, input_shape=SHAPE, graph=graph,
                     options=options)


def test_regularizer_matches_torch_pruning():
    """Our gradient term == TP 1.6.1 GroupNormPruner.regularize on the same weights."""
    torch = pytest.importorskip("torch")
    tp = pytest.importorskip("torch_pruning")
    from parity.convert import flax_to_torch, torch_to_flax

    _, variables, graph = _model()
    net = flax_to_torch(NAME, variables).float().eval()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    pruner = tp.pruner.GroupNormPruner(net, torch.zeros(1, 1, 16, 16),
                                       importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       reg=1e-3, ignored_layers=[net.fc])
    pruner.regularize(net)  # grads += reg * gamma * w, gamma in [1, 2^4]
    grads = {k: p.grad for k, p in net.named_parameters()}
    sd = {k: grads.get(k, t) for k, t in net.state_dict().items()}
    ref = torch_to_flax(NAME, sd)[1]["params"]

    tx = group_norm_regularizer(graph, reg=1e-3, alpha=4.0)
    params = jax.tree.map(jnp.asarray, variables["params"])
    state = tx.init(params)
    ours, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert int(state.count) == 1
    err = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-30)),
                       ours, ref)
    assert max(jax.tree.leaves(err)) < 1e-5
    # Something was regularized, biases were not (TP's bias=False).
    assert float(np.abs(np.asarray(ours["layer1"]["0"]["conv1"]["kernel"])).max()) > 0
    assert float(np.abs(np.asarray(ours["layer1"]["0"]["bn1"]["bias"])).max()) == 0


def test_bivariate_cdf_and_relu_moments():
    rng = np.random.default_rng(0)
    for _ in range(5):
        h, k = rng.normal(size=2)
        rho = rng.uniform(-0.9, 0.9)
        ref = multivariate_normal.cdf([h, k], cov=[[1, rho], [rho, 1]])
        assert abs(bivariate_cdf(np.array(h), np.array(k), np.array(rho)) - ref) < 1e-6
    mean = np.array([0.3, -0.5, 1.0])
    std = np.array([1.0, 0.7, 0.4])
    corr = np.array([[1, 0.6, -0.3], [0.6, 1, 0.2], [-0.3, 0.2, 1]])
    gram = relu_gram(mean, std, corr)
    y = rng.multivariate_normal(mean, corr * np.outer(std, std), size=2_000_000)
    h = np.maximum(y, 0)
    mc = h.T @ h / len(h)
    np.testing.assert_allclose(gram, mc, rtol=2e-2, atol=2e-3)


def test_udfc_compensation_is_exact_for_a_duplicate_channel():
    """A pruned channel identical to a kept one is folded into it: outputs unchanged."""
    model, variables, graph = _model()
    chains = find_chains(graph, variables["params"])
    gid = graph.by_width("layer1.0.conv1").id
    assert gid in chains and graph.by_width("conv1").id not in chains  # residual: not compensable
    v = jax.tree.map(np.array, variables)
    blk, stats = v["params"]["layer1"]["0"], v["batch_stats"]["layer1"]["0"]
    blk["conv1"]["kernel"][..., 5] = blk["conv1"]["kernel"][..., 3]
    for leaf in (blk["bn1"]["scale"], blk["bn1"]["bias"], stats["bn1"]["mean"], stats["bn1"]["var"]):
        leaf[5] = leaf[3]
    kept = np.array([c for c in range(16) if c != 5])
    plan = make_plan(graph, {gid: tuple(int(c) for c in kept)})
    S, diag = compensation(v, chains[gid], kept, ridge=0.0)
    assert diag["mean_relative_residual"] < 1e-4
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16, 16, 1)), jnp.float32)
    ref = np.asarray(model.apply(v, x))
    small, sv = apply_plan(NAME, fold(v, chains[gid], kept, S), plan, graph=graph)
    plain, pv = apply_plan(NAME, v, plan, graph=graph)
    scale = np.abs(ref).max()
    assert np.abs(np.asarray(small.apply(sv, x)) - ref).max() / scale < 1e-3
    assert np.abs(np.asarray(plain.apply(pv, x)) - ref).max() / scale > 1e-2


def test_restricted_cost_model():
    task = _task("udfc")
    cost = task.cost
    chains = [g for g in cost.group_ids if g in find_chains(task.graph, task.variables["params"])]
    sub = restrict(cost, chains)
    keep = np.array([s // 2 for s in sub.sizes], np.float64)
    full = cost.keep_vector(dict(zip(chains, keep)))
    assert sub.macs(keep) == pytest.approx(cost.macs(full), rel=1e-12)
    assert sub.params(keep) == pytest.approx(cost.params(full), rel=1e-12)
    assert sub.ratio(sub.full) == pytest.approx(1.0)


def test_udfc_scope_all_prunes_residual_groups():
    task = _task("udfc", scope="all")
    result = run("udfc", task)
    stream = task.graph.by_width("conv1").id  # stage 1 stream
    assert stream in dict(result.outcome.plan.keep)
    assert abs(result.macs_ratio / 0.5 - 1) <= 0.01
    only = run("udfc", _task("udfc"))
    assert stream not in dict(only.outcome.plan.keep)


@pytest.mark.parametrize("method,options,needle", [
    ("depgraph", dict(allocation="layerwise", sparse_steps=0), "allocation='layerwise'"),
    ("depgraph", dict(sparse_steps=-1), "sparse_steps=-1"),
    ("depgraph", dict(sparse_steps=0, reg=-1.0), "reg=-1.0"),
    ("depgraph", dict(sparse_steps=5), "needs a training callback"),
    ("udfc", dict(allocation="layerwise"), "allocation='layerwise'"),
    ("udfc", dict(scope="residual"), "scope='residual'"),
    ("udfc", dict(ridge=-1.0), "ridge=-1.0"),
])
def test_bad_options(method, options, needle):
    with pytest.raises(ValueError, match=needle) as e:
        run(method, _task(method, **options))
    assert "\n" not in str(e.value)


def test_udfc_refuses_non_relu_and_bn_free_models():
    """The ReLU requirement is read from the graph (graph.activations), not the name."""
    from hobs_jax.graph import build_graph

    task = _task("udfc")
    assert task.graph.activations == ("relu",)
    mbv2 = build_graph("mobilenet_v2", input_shape=(1, 32, 32, 3))
    assert mbv2.activations == ("clip",)  # ReLU6
    with pytest.raises(ValueError, match=r"udfc: resnet20 applies clip to its channels, not ReLU alone"):
        run("udfc", dataclasses.replace(task, graph=mbv2))
    no_bn = {"params": task.variables["params"]}
    with pytest.raises(ValueError, match="no batch_stats"):
        run("udfc", dataclasses.replace(task, variables=no_bn))
