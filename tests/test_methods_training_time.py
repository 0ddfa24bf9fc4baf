"""The training-time methods (JTP, BilevelPruning, StructAlign) and what they share.

On ResNet-20 at 16x16x1 with random variables (the contract test's setup, reused):
  * a 0/1 channel mask gives exactly the network cut by ``apply_plan`` (eval mode);
  * the partial L2 term equals its definition and has no gradient on kept channels;
  * the straight-through gate is 0/1 forward with the sigmoid's gradient;
  * the differentiable cost equals the exact cost model at integer counts;
  * the learned allocation meets the target within 1% from any proposal;
  * each method trains through the task's callback in ``rounds`` calls of
    ``round_steps`` steps with a loss term only (no transform), saves its decisions as
    JSON, and refuses to run without a training loop or data, in one line;
  * StructAlign's generator, trained a few steps, proposes fewer MACs than the dense net;
    BilevelPruning reports its dynamic variant.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax.graph import apply_plan, plan_from_scores
from hobs_jax.methods import Calibration, get_method, make_task, run
from hobs_jax.methods.learned import scaled_keep
from hobs_jax.methods.masks import ChannelMasks, SoftCost, partial_l2, st_gate, topk_mask
from tests.test_methods_contract import NAME, _setup

METHODS = ("jtp", "bilevel", "structalign")


def _task(**changes):
    _, _, base = _setup()
    return dataclasses.replace(base, **changes)


def test_hard_masks_equal_surgery():
    variables, calib, base = _setup()
    masks = ChannelMasks.of(base)
    assert masks.gids == tuple(g.id for g in base.graph.prunable) and not masks.skipped
    assert masks.gates and all(len(masks.sites[g]) == 2 for g in masks.gates)  # BN scale + bias
    rng = np.random.default_rng(1)
    scores = {g: rng.normal(size=masks.sizes[g]) for g in masks.gids}
    keep = {g: max(1, masks.sizes[g] // 3) for g in masks.gids}
    pruned, pvars = apply_plan(NAME, variables, plan_from_scores(base.graph, scores, keep),
                               graph=base.graph)
    x = jnp.asarray(calib.images[:8])
    ref = np.asarray(pruned.apply(pvars, x, train=False))
    got = np.asarray(masks.logits(variables, {g: topk_mask(scores[g], keep[g]) for g in masks.gids}, x,
                                  train_bn=False))
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    # A gate of ones changes nothing; closing every gated channel changes the logits.
    ones = masks.logits(variables, {}, x, train_bn=False, gate_fn=lambda g, p: jnp.ones((p.shape[0], masks.sizes[g])))
    zeros = masks.logits(variables, {}, x, train_bn=False, gate_fn=lambda g, p: jnp.zeros((p.shape[0], masks.sizes[g])))
    plain = masks.logits(variables, {}, x, train_bn=False)
    assert np.allclose(ones, plain, atol=1e-6) and not np.allclose(zeros, plain, atol=1e-3)


def test_partial_l2_matches_definition_and_spares_kept_channels():
    variables, _, base = _setup()
    masks = ChannelMasks.of(base)
    g = masks.gids[1]
    w = np.zeros(masks.sizes[g], np.float32)
    w[:3] = 1.0
    loss = partial_l2(masks, {g: w}, coef=0.5)
    params = variables["params"]
    # Definition: every member slice (kernels, BN scale and bias) of channels 0..2 of g.
    from hobs_jax.methods.depgraph import group_slots
    flat = {tuple(str(getattr(k, "key", k)) for k in p): np.asarray(v, np.float64)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = 0.0
    for s in group_slots(base.graph, include_bias=True, groups=(g,))[g]:
        a = np.moveaxis(flat[s.path], s.axis, 0)[s.positions]
        want += float(np.sum((a.reshape(len(s.positions), -1) ** 2).sum(1) * w[s.channels]))
    assert float(loss(params)) == pytest.approx(0.25 * want, rel=1e-5)
    grads = jax.grad(loss)(params)
    for s in group_slots(base.graph, include_bias=True, groups=(g,))[g]:
        leaf = np.moveaxis(np.asarray(_get(grads, s.path)), s.axis, 0)
        kept = s.positions[s.channels >= 3]
        assert np.abs(leaf[kept]).max() == 0.0
        assert np.abs(leaf[s.positions[s.channels < 3]]).max() > 0


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_st_gate_is_hard_forward_with_soft_gradient():
    logits = jnp.array([-5.0, -2.0, 0.5, 4.0])
    out = st_gate(logits, None, temperature=0.4, offset=0.0)
    assert np.array_equal(np.asarray(out), [0.0, 0.0, 1.0, 1.0])
    g = jax.grad(lambda z: jnp.sum(st_gate(z, None, 0.4, 0.0) * jnp.arange(4.0)))(logits)
    soft = jax.nn.sigmoid(logits / 0.4)
    assert np.allclose(g, soft * (1 - soft) / 0.4 * np.arange(4.0), rtol=1e-5)
    noisy = st_gate(jnp.zeros(1000), jax.random.key(0), 0.4, 0.0)
    assert set(np.unique(np.asarray(noisy))) == {0.0, 1.0} and 0.4 < float(noisy.mean()) < 0.6


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_soft_cost_equals_cost_model(metric):
    _, _, base = _setup()
    cost = base.cost
    rng = np.random.default_rng(0)
    keep = np.array([rng.integers(1, s + 1) for s in cost.sizes], np.float64)
    soft = SoftCost(cost, metric)
    got = float(soft.ratio({g: k for g, k in zip(cost.group_ids, keep)}))
    assert got == pytest.approx(cost.ratio(keep, metric), rel=1e-5)
    assert float(soft.ratio({})) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("target", [0.5, 0.33])
def test_scaled_keep_meets_target_from_any_proposal(target):
    _, _, base = _setup()
    cost = base.cost
    for ratios in (np.ones(len(cost.sizes)), np.linspace(0.2, 1.0, len(cost.sizes))):
        keep, alpha = scaled_keep(cost, ratios, target, "macs")
        assert abs(cost.ratio(keep, "macs") / target - 1) <= 0.01
        assert np.all(keep >= 1) and np.all(keep <= cost.sizes) and alpha > 0


class Recorder:
    """A training callback that records what the engine is asked to do (it trains nothing)."""

    def __init__(self):
        self.calls = []

    def __call__(self, variables, steps, extra_loss=None, extra_transform=None):
        params = variables["params"]
        value = float(extra_loss(params)) if extra_loss is not None else None
        self.calls.append({"steps": steps, "loss": value, "transform": extra_transform})
        return variables


@pytest.mark.parametrize("method", METHODS)
def test_rounds_through_the_callback_and_decisions(method, tmp_path):
    spec = get_method(method)
    options = spec.smoke_config()
    rec = Recorder()
    r = run(method, _task(target=0.5, options=options, finetune=rec))
    o = spec.options(options).regularizer
    assert [c["steps"] for c in rec.calls] == [o.round_steps] * o.rounds
    assert all(c["transform"] is None and c["loss"] is not None and c["loss"] >= 0 for c in rec.calls)
    paths = r.outcome.artifacts[f"{method}_decisions"](str(tmp_path / "d"))
    record = json.load(open(paths[0]))
    assert record["method"] == method and record["decisions"]
    assert set(record["keep"]) == {str(g) for g in r.task.cost.group_ids}
    assert abs(r.macs_ratio / 0.5 - 1) <= 0.01
    assert r.outcome.info[f"{method}_training"]["steps"] == o.rounds * o.round_steps
    assert os.path.getsize(paths[0]) > 0


@pytest.mark.parametrize("method", METHODS)
def test_refuses_without_training_loop_or_data(method):
    options = get_method(method).smoke_config()
    with pytest.raises(ValueError, match="needs a training loop") as e:
        run(method, _task(options=options, finetune=None))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="calibration data|training data") as e:
        run(method, _task(options=options, calib=None))
    assert "\n" not in str(e.value)
    variables, _, _ = _setup()
    with pytest.raises(ValueError, match="needs calibration data"):
        make_task(method, "resnet20", variables, target=0.5)


def test_structalign_generator_proposes_fewer_macs():
    options = dict(get_method("structalign").smoke_config())
    options.update(rounds=1, gen_steps=12, gen_lr=3e-2, resource_weight=4.0)
    rec = Recorder()
    r = run("structalign", _task(target=0.5, options=options, finetune=rec))
    assert r.outcome.info["learned"]["proposed_ratio"] < 0.95
    assert r.outcome.info["structalign_training"]["proposed_ratio"] < 0.95


def test_bilevel_reports_its_dynamic_variant():
    rec = Recorder()
    r = run("bilevel", _task(target=0.5, options=get_method("bilevel").smoke_config(), finetune=rec))
    dyn = r.outcome.info["bilevel_dynamic"]
    assert 0 < dyn["effective_ratio"] <= dyn["static_ratio"] + dyn["gate_ratio"] + 1e-6
    assert dyn["open_fraction"] and all(0 <= v <= 1 for v in dyn["open_fraction"].values())
    assert 0 <= dyn["dynamic_top1"] <= 1 and 0 <= dyn["static_top1"] <= 1


def test_calibration_split_keeps_tiny_sets_whole():
    from hobs_jax.methods.training_time import split
    c = Calibration(np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32))
    a, b = split(c, 4)
    assert len(a.images) == 6 and list(b.labels) == [6, 7, 8, 9]
    a, b = split(c, 6)
    assert len(a.images) == len(b.images) == 10
