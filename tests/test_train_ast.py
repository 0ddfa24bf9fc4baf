"""AST sample selection: the controller (step response, disturbance, anti-windup, gain
check), the scores (closed-form gradient norm against jax.grad), config errors, and fit
with selection (one compiled train step, full batches of selected samples only, records)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hobs_jax.data import TrainLoader, get_source
from hobs_jax.train import ast_control as ctl
from hobs_jax.train import ast_scores, fit, get_train_config, read_metrics, validate_train_config
from hobs_jax.train.ast import planned_steps
from tests._tiny import TinyCNN, enable_compile_cache, init_tiny

enable_compile_cache()


# ------------------------------------------------------------------------ controller
def _ensemble(cfg, stream, steps, seeds=40, **kw):
    return np.mean([ctl.simulate(cfg, stream, steps, 128, seed=s, **kw)["rate"]
                    for s in range(seeds)], axis=0)


def test_step_response_reaches_new_target_fast_with_bounded_overshoot():
    cfg = ctl.ControllerConfig(0.1, kp=0.1, ki=0.05, ema=0.3)
    rate = _ensemble(cfg, ctl.lognormal_stream(1.0), 250, targets=lambda t: 0.1 if t < 50 else 0.2)
    before, after = rate[30:50], rate[50:]
    assert abs(before.mean() - 0.1) < 0.005
    smooth = np.convolve(after, np.ones(5) / 5, mode="valid")
    outside = np.where(np.abs(smooth - 0.2) > 0.02)[0]  # the +-2 point goal
    assert (outside[-1] + 1 if len(outside) else 0) <= 10  # settled within 10 batches
    assert smooth.max() < 0.2 + 0.3 * 0.1  # overshoot < 30% of the step
    assert abs(after[50:].mean() - 0.2) < 0.005


def test_rate_is_held_through_a_change_of_the_score_distribution():
    def shock(t, rng, b):  # heavier tail and 5x smaller scores from batch 100 on
        return np.exp(rng.standard_normal(b)) if t < 100 else 0.2 * np.exp(
            2.0 * rng.standard_normal(b))

    cfg = ctl.ControllerConfig(0.1, kp=0.1, ki=0.05, ema=0.3)
    sims = [ctl.simulate(cfg, shock, 400, 128, seed=s)["rate"] for s in range(5)]
    for rate in sims:
        windows = rate[150:].reshape(-1, 50).mean(axis=1)
        assert np.abs(windows - 0.1).max() <= 0.02  # the +-2 point goal


def test_anti_windup_recovers_quickly_after_a_long_saturation():
    def collapse(t, rng, b):  # identical scores: nothing is above the threshold
        return np.ones(b) if t < 300 else np.exp(rng.standard_normal(b))

    def recovery(anti_windup):
        cfg = ctl.ControllerConfig(0.1, kp=0.1, ki=0.05, ema=0.3, anti_windup=anti_windup)
        sim = ctl.simulate(cfg, collapse, 800, 128)
        assert sim["rate"][250:300].max() == 0.0  # saturated during the collapse
        w = np.convolve(sim["rate"][300:], np.ones(10) / 10, mode="valid")
        return int(np.argmax(np.abs(w - 0.1) < 0.03))

    fast, slow = recovery(True), recovery(False)
    assert fast <= 50 and slow >= 200, (fast, slow)


def test_controller_clamps_and_state_round_trip():
    cfg = ctl.ControllerConfig(0.1, kp=0.1, ki=0.05, ema=0.3)
    s = ctl.start(cfg)
    assert s.level == pytest.approx(0.1)
    for _ in range(500):
        s = ctl.update(cfg, s, 1.0)  # far too many selected: the level goes to its floor
    assert s.u == pytest.approx(cfg.u_min) and abs(s.integral) <= cfg.integral_max
    assert ctl.ControllerState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_pin_guard_fires_after_a_whole_window():
    g = ctl.PinGuard(window=5)
    assert [g.observe(r) for r in (0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0)] == [""] * 7
    assert g.observe(0.0) == "pinned at 0"
    g.reset()
    assert [g.observe(1.0) for _ in range(5)][-1] == "pinned at 1"


@pytest.mark.parametrize("kp,ki,ok", [(0.1, 0.05, True), (0.0015, 0.00005, True),
                                      (30.0, 0.0, False), (0.0, 10.0, False)])
def test_gain_check_on_the_reference_plant(kp, ki, ok):
    for target in (0.05, 0.2):
        why = ctl.check_gains(ctl.ControllerConfig(target, kp, ki, 0.3), 128)
        assert (why == "") == ok, why


# ------------------------------------------------------------------------------ config
def _config(**ast):
    c = get_train_config()
    c.ast.enabled = True
    for k, v in ast.items():
        c.ast[k] = v
    return c


@pytest.mark.parametrize("key,value,match", [
    ("target_rate", 0.0, r"train\.ast\.target_rate=0\.0: must be in \(0, 1\]"),
    ("target_rate", 1.5, r"train\.ast\.target_rate=1\.5: must be in \(0, 1\]"),
    ("score", "margin", r"train\.ast\.score='margin': unknown"),
    ("rule", "topk", r"train\.ast\.rule='topk': unknown"),
    ("ema", 0.0, r"train\.ast\.ema=0\.0"),
    ("kp", -0.1, r"train\.ast\.kp/ki=\(-0\.1, 0\.05\): gains must be >= 0"),
    ("kp", 30.0, r"train\.ast\.kp/ki=\(30\.0, 0\.05\): the controller diverges: the rate"),
    ("score_refresh", 1.5, r"train\.ast\.score_refresh=1\.5"),
    ("warmup_steps", -1, r"train\.ast\.warmup_steps=-1"),
    ("target_rate", float("nan"), r"train\.ast\.target_rate=nan: must be a finite number"),
    ("selection", "topk", r"train\.ast\.selection='topk': unknown"),
    ("sample_floor", 0.0, r"train\.ast\.sample_floor=0\.0: must be in \(0, 1\)"),
    ("bn_reestimate", -1, r"train\.ast\.bn_reestimate=-1: must be an int >= 0"),
    ("score", "reducible", r"train\.ast\.reference='': score 'reducible' needs the reference"),
])
def test_bad_ast_values_raise_one_line_errors(key, value, match):
    with pytest.raises(ValueError, match=match) as e:
        validate_train_config(_config(**{key: value}))
    assert "\n" not in str(e.value)


def test_scores_needing_labels_are_refused_on_unlabeled_data():
    with pytest.raises(ValueError, match=r"train\.ast\.score='loss': needs labels but the "
                                         r"training data is unlabeled") as e:
        validate_train_config(_config(score="loss"), labeled=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"train\.ast\.rule='infobatch': needs labels"):
        validate_train_config(_config(rule="infobatch"), labeled=False)
    validate_train_config(_config(score="entropy"), labeled=False)  # label-free: fine
    validate_train_config(_config(enabled=False, score="loss"), labeled=False)  # off: fine


def test_planned_steps_keep_the_data_budget():
    a = _config(target_rate=0.1, warmup_steps=50).ast
    assert planned_steps(a, 1000) == 50 + 95
    a.warmup_steps = 2000
    assert planned_steps(a, 1000) == 1000
    a.enabled = False
    assert planned_steps(a, 1000) == 1000


# ------------------------------------------------------------------------------ scores
def test_grad_proxy_is_the_exact_norm_of_the_head_weight_gradient():
    model = TinyCNN(num_classes=6, width=4)
    variables = init_tiny(model, (8, 8, 1))
    variables["params"]["head"]["kernel"] = np.random.default_rng(0).normal(
        size=variables["params"]["head"]["kernel"].shape).astype(np.float32)
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 5], np.int32)
    apply = ast_scores.with_head_input_norm(model.apply)
    logits, extras = apply(variables, x, train=False)
    comps = np.asarray(ast_scores.components("loss_grad", logits, y, x,
                                             extras[ast_scores.HEAD_NORM_KEY]))

    def ce(kernel, i):
        v = jax.tree.map(lambda a: a, variables)
        v["params"]["head"]["kernel"] = kernel
        z = model.apply(v, x[i:i + 1], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(z, y[i:i + 1]).sum()

    for i in range(5):
        g = jax.grad(ce)(jnp.asarray(variables["params"]["head"]["kernel"]), i)
        np.testing.assert_allclose(comps[i, 1], np.linalg.norm(np.asarray(g)), rtol=1e-4)
        np.testing.assert_allclose(comps[i, 0], float(ce(variables["params"]["head"]["kernel"],
                                                         i)), rtol=1e-5)
    # entropy and intensity against numpy
    p = np.asarray(jax.nn.softmax(logits))
    ent = np.asarray(ast_scores.components("entropy", logits, None, x))[:, 0]
    np.testing.assert_allclose(ent, -(p * np.log(p)).sum(-1), rtol=1e-5)
    inten = np.asarray(ast_scores.components("loss_intensity", logits, y, x))[:, 1]
    np.testing.assert_allclose(inten, np.abs(x).reshape(5, -1).mean(-1), rtol=1e-6)


def test_normalizer_gives_mean_one_scores_per_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    comps = np.stack([np.where(labels == 0, 1.0, 10.0) * rng.exponential(size=1000),
                      np.zeros(1000)], -1)
    flat = ast_scores.Normalizer("loss", 2, class_balanced=False)
    flat.observe(comps, labels)
    s = flat.combine(comps, labels)
    top = s > np.quantile(s, 0.9)
    assert abs(s.mean() - 1) < 1e-9 and labels[top].mean() > 0.9  # class 1 takes the top 10%
    bal = ast_scores.Normalizer("loss", 2, class_balanced=True)
    bal.observe(comps, labels)
    s = bal.combine(comps, labels)
    for c in (0, 1):  # each class has mean 1: one threshold selects both about equally
        assert abs(s[labels == c].mean() - 1) < 1e-9
    top = s > np.quantile(s, 0.9)
    assert 0.35 < labels[top].mean() < 0.65
    bal2 = ast_scores.Normalizer("loss", 2, class_balanced=True)
    bal2.load(json.loads(json.dumps(bal.to_dict())))
    np.testing.assert_array_equal(bal2.combine(comps, labels), s)


# -------------------------------------------------------------------------- fit + AST
SRC = get_source("synthetic", image_shape=(8, 8, 1), num_classes=8, train_size=512,
                 test_size=64, augment=True)


def _fit_config(steps=60, **ast):
    c = get_train_config()
    c.steps, c.batch_size, c.lr, c.log_every = steps, 32, 0.1, 5
    c.checkpoint.every_steps = 0
    c.progress, c.tensorboard = False, False
    c.ast.enabled, c.ast.target_rate, c.ast.warmup_steps = True, 0.25, 4
    for k, v in ast.items():
        c.ast[k] = v
    return c


class _Lowerings:
    """Counts jit lowerings by function name (a compile-cache hit still lowers first)."""

    def __init__(self):
        self.names: list[str] = []
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, duration, **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.names.append(kw.get("fun_name", ""))

    def count(self, name):
        return self.names.count(f"jit({name})")


LOWERINGS = _Lowerings()


@pytest.mark.parametrize("refresh,scorer_shapes", [(0.0, 1), (0.5, 2)])
def test_fit_with_ast_compiles_once_and_trains_only_full_batches_of_selected(
        tmp_path, refresh, scorer_shapes):
    model = TinyCNN(num_classes=8)
    c = _fit_config(score="loss_grad" if refresh else "loss", score_refresh=refresh)
    before_step, before_score = LOWERINGS.count("step"), LOWERINGS.count("ast_score")
    r = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(SRC, "train", 32, seed=0), c,
            str(tmp_path))
    a = r.metrics["ast"]
    assert r.metrics["steps"] == a["planned_steps"] == 4 + 14
    # one train step and one scorer per batch shape, for all the steps and candidates
    assert LOWERINGS.count("step") - before_step == 1
    assert LOWERINGS.count("ast_score") - before_score == scorer_shapes
    assert a["samples_backpropagated"] == 18 * 32
    # everything back-propagated was selected and vice versa (the rest is still queued)
    rec = read_metrics(str(tmp_path), "ast")[-1]
    assert rec["step"] == 15
    assert a["samples_selected"] == a["samples_backpropagated"] + a["queued"]
    assert 0 <= a["queued"] < 32
    seen = a["samples_seen"]
    assert 0.2 <= a["achieved_rate"] <= 0.3
    if refresh:  # stale table: only half of each known batch re-scored
        assert a["samples_scored"] < 0.8 * (seen - 4 * 32)
    else:
        assert a["samples_scored"] == seen - 4 * 32  # every candidate after warm-up
    assert os.path.getsize(tmp_path / "ast_trace.png") > 1000
    lines = open(tmp_path / "ast_trace.csv").read().splitlines()
    assert len(lines) == 1 + seen // 32
    for key in ("threshold", "rate", "rate_ema", "samples_scored", "samples_backpropagated",
                "seconds_scoring", "seconds_selection"):
        assert key in rec


def test_random_and_infobatch_rules(tmp_path):
    model = TinyCNN(num_classes=8)
    r = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(SRC, "train", 32, seed=0),
            _fit_config(rule="random"), str(tmp_path / "random"))
    a = r.metrics["ast"]
    assert a["samples_scored"] == 0 and 0.15 <= a["achieved_rate"] <= 0.35
    r = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(SRC, "train", 32, seed=0),
            _fit_config(rule="infobatch", warmup_steps=0, target_rate=0.8), str(tmp_path / "ib"))
    a = r.metrics["ast"]
    # the first epoch (no stale losses) is trained in full, later ones drop samples
    trace = np.loadtxt(tmp_path / "ib" / "ast_trace.csv", delimiter=",", skiprows=1)
    epoch, rate = trace[:, 2], trace[:, 7]
    assert np.all(rate[epoch == 0] == 1.0) and rate[epoch >= 1].mean() < 0.9
    annealing = trace[:, 1] >= (1 - 0.125) * a["planned_steps"]  # the last 12.5% of steps
    assert annealing.any() and np.all(rate[annealing] == 1.0)
    assert a["samples_scored"] == 0 and a["converged"] is None


def test_run_ends_with_bn_statistics_of_a_uniform_sample(tmp_path):
    """``bn_reestimate``: the returned BN running statistics are those of the loader's
    first batches of epoch 0 (a uniform sample, whatever was selected); the parameters
    are those of the same run without it."""
    from hobs_jax.data.pipeline import LoaderPosition
    from hobs_jax.stats import reestimate_bn

    model = TinyCNN(num_classes=8)
    v0 = init_tiny(model, (8, 8, 1))
    loader = TrainLoader(SRC, "train", 32, seed=0)
    r = fit(model, v0, loader, _fit_config(rule="random", bn_reestimate=50), str(tmp_path / "on"))
    assert r.metrics["ast"]["bn_reestimated_images"] == 50
    ref_loader = TrainLoader(SRC, "train", 32, seed=0)
    batches = [ref_loader.read(ref_loader.global_indices(LoaderPosition(0, s)),
                               ref_loader.global_noise(LoaderPosition(0, s)))["image"] for s in (0, 1)]
    want = reestimate_bn(model, r.variables, batches)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7),
                 r.variables["batch_stats"], want)
    events = [e for e in read_metrics(str(tmp_path / "on"), "event") if e.get("event") == "bn_reestimate"]
    assert len(events) == 1 and events[0]["images"] == 50
    off = fit(model, v0, TrainLoader(SRC, "train", 32, seed=0), _fit_config(rule="random", bn_reestimate=0),
              str(tmp_path / "off"))
    assert off.metrics["ast"]["bn_reestimated_images"] == 0
    # Same training (same rule and seed): the parameters agree; only the statistics moved.
    jax.tree.map(np.testing.assert_array_equal, r.variables["params"], off.variables["params"])
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves(r.variables["batch_stats"]), jax.tree.leaves(off.variables["batch_stats"]))]
    assert max(moved) > 1e-4


def test_soft_selection_holds_the_level_and_weights_unbiasedly():
    """'sample' selection: the solved tau gives the requested mean probability, p is
    bounded below by the floor and above by 1, and target / p weights make the weighted
    selected count an unbiased estimate of the candidates (importance sampling)."""
    rng = np.random.default_rng(0)
    scores = rng.lognormal(0.0, 1.0, 4096)
    scores /= scores.mean()
    ref = ctl.Reference()
    ref.push(scores)
    target, floor = 0.1, 0.01
    tau = ref.sample_threshold(target, scores, floor)
    p = ctl.sample_probabilities(scores, tau, floor)
    assert abs(p.mean() - target) < 1e-6
    assert p.min() >= floor and p.max() == 1.0  # the top scores are always taken
    assert np.all(np.diff(p[np.argsort(scores)]) >= 0)  # monotone in the score
    # E[sum over selected of target / p] = target * N over many draws
    draws = rng.random((200, len(scores))) < p
    est = (draws * (target / p)).sum(axis=1).mean()
    assert abs(est / (target * len(scores)) - 1) < 0.02
    assert ref.sample_threshold(floor, scores, floor) == ctl.THRESHOLD_MAX


def test_fit_with_soft_selection_holds_the_rate_and_weights_the_loss(tmp_path):
    model = TinyCNN(num_classes=8)
    c = _fit_config(selection="sample")
    r = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(SRC, "train", 32, seed=0), c,
            str(tmp_path))
    a = r.metrics["ast"]
    assert a["selection"] == "sample" and r.metrics["steps"] == a["planned_steps"]
    assert 0.18 <= a["achieved_rate"] <= 0.32
    trace = np.loadtxt(tmp_path / "ast_trace.csv", delimiter=",", skiprows=1)
    assert np.isfinite(trace[trace[:, 4] == 0, 5]).all()  # tau logged after warm-up


# ------------------------------------------------------------ reducible loss (RHO-LOSS)
def test_reference_losses_are_the_frozen_models_cross_entropy_and_files_are_checked(tmp_path):
    from hobs_jax.train import ast_reference

    model = TinyCNN(num_classes=8)
    v = init_tiny(model, (8, 8, 1))
    ref = ast_reference.reference_losses(model.apply, v, SRC, "train", batch_size=200)
    assert ref.shape == (512,) and ref.dtype == np.float32  # 512 = 2 full batches + a padded one
    x, y = SRC.batch("train", np.arange(500, 512), train=False)
    logp = jax.nn.log_softmax(model.apply(v, x, train=False))
    np.testing.assert_allclose(ref[500:], -np.asarray(logp)[np.arange(12), y], rtol=1e-5)
    parts = [ast_reference.partial_losses(model.apply, v, SRC, "train", batch_size=200,
                                          process_index=p, process_count=2) for p in (0, 1)]
    assert np.count_nonzero(parts[0]) == 200 + 112 and np.count_nonzero(parts[1]) == 200
    np.testing.assert_array_equal(parts[0] + parts[1], ref)  # two processes: the same vector
    path = str(tmp_path / "ref.npy")
    assert ast_reference.ensure(path, model.apply, v, SRC, "train") > 0
    assert ast_reference.ensure(path, model.apply, v, SRC, "train") == 0.0  # reused
    np.testing.assert_array_equal(ast_reference.load(path, 512), ref)
    np.save(tmp_path / "short.npy", ref[:100])
    bad = ref.copy()
    bad[3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    for name, match in [("missing.npy", "no such file"),
                        ("short.npy", r"holds shape \(100,\), the training split has 512"),
                        ("nan.npy", "non-finite")]:
        with pytest.raises(ValueError, match=match) as e:
            ast_reference.load(str(tmp_path / name), 512)
        assert "\n" not in str(e.value)
    np.testing.assert_array_equal(ast_reference.reducible(np.array([2.0, 1.0, 0.5]),
                                                          np.array([0.5, 1.0, 2.0])), [1.5, 0, 0])


class _RecordingLoader(TrainLoader):
    """Records the example indices of every batch the selector assembles for training:
    full-batch reads outside the loader's own candidate batches (the stale scores' re-scored
    parts are smaller)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, prefetch=0, **kw)
        self.trained: list[np.ndarray] = []
        self._candidate = False

    def make_batch(self, pos):
        self._candidate = True
        try:
            return super().make_batch(pos)
        finally:
            self._candidate = False

    def read(self, indices, noise):
        if not self._candidate and len(indices) == self.batch_size:
            self.trained.append(np.asarray(indices))
        return super().read(indices, noise)


@pytest.mark.parametrize("refresh", [0.0, 0.5])
def test_reducible_score_never_trains_on_what_the_reference_cannot_learn(tmp_path, refresh):
    """Examples 0-255 get a reference loss no model reaches (reducible loss 0), the others
    0: after warm-up every back-propagated sample is one of 256-511 (with fresh and with
    stale scores), while the plain loss score takes both halves."""
    model = TinyCNN(num_classes=8)
    v = init_tiny(model, (8, 8, 1))
    ref = np.where(np.arange(512) < 256, 1e3, 0.0).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    picked = {}
    for score in ("reducible", "loss"):
        loader = _RecordingLoader(SRC, "train", 32, seed=0)
        c = _fit_config(score=score, reference=str(tmp_path / "ref.npy"), score_refresh=refresh,
                        bn_reestimate=0)
        r = fit(model, v, loader, c, str(tmp_path / f"{score}{refresh}"))
        a = r.metrics["ast"]
        assert len(loader.trained) == a["planned_steps"] == r.metrics["steps"]
        assert 0.2 <= a["achieved_rate"] <= 0.3
        assert a["reference"] == (str(tmp_path / "ref.npy") if score == "reducible" else None)
        picked[score] = np.concatenate(loader.trained[4:])  # after the 4 warm-up steps
    assert picked["reducible"].min() >= 256
    assert (picked["loss"] < 256).mean() > 0.25
