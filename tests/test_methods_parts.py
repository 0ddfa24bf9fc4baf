"""Methods as compositions of parts (issue 17, points 4-6): typed options validated when
built, hybrids in one line, the training-time regularizer shape, the OBS engine's timing
hook, and no private names across packages."""

import ast
import dataclasses
import functools
import os
from typing import Literal

import numpy as np
import pytest

from hobs_jax import models, obs
from hobs_jax.methods import Calibration, MethodSpec, Scores, get_method, get_part, make_task, run
from hobs_jax.options import Options
from tests._tiny import REPO_ROOT, enable_compile_cache

enable_compile_cache()

NAME, SHAPE = "resnet20", (1, 16, 16, 1)


@dataclasses.dataclass(frozen=True)
class Inner(Options):
    k: int = 2


@dataclasses.dataclass(frozen=True)
class Example(Options):
    ratio: float = 0.5
    steps: int = 3
    flag: bool = True
    kind: Literal["a", "b"] = "a"
    inner: Inner = dataclasses.field(default_factory=Inner)

    def check(self):
        self.require(0 < self.ratio < 1, "ratio", "must be in (0, 1)")


def test_options_are_typed_frozen_and_validated_when_built():
    o = Example.build(dict(ratio=0.25, inner=dict(k=5)), where="m")
    assert (o.ratio, o.steps, o.flag, o.kind, o.inner.k) == (0.25, 3, True, "a", 5)
    assert o.to_dict() == {"ratio": 0.25, "steps": 3, "flag": True, "kind": "a", "inner": {"k": 5}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.steps = 4
    for values, needle in ((dict(ratio=1.5), r"^m: ratio=1.5: must be in \(0, 1\)$"),
                           (dict(steps=2.0), r"^m: steps=2.0: must be an int \(not a float\)$"),
                           (dict(steps=True), r"^m: steps=True: must be an int$"),
                           (dict(flag=1), r"^m: flag=1: must be True or False$"),
                           (dict(kind="c"), r"^m: kind='c': use one of \('a', 'b'\)$"),
                           (dict(inner=dict(k="x")), r"^m.inner: k='x': must be an int$"),
                           (dict(inner=dict(j=1)), r"^m.inner: unknown option 'j'; options: k$"),
                           (dict(ratoi=0.2), r"^m: unknown option 'ratoi'; options: ratio, steps")):
        with pytest.raises(ValueError, match=needle):
            Example.build(values, where="m")
    assert o.replace(steps=7).steps == 7 and o.steps == 3
    with pytest.raises(ValueError, match="ratio=2"):
        o.replace(ratio=2)


def test_int_option_widens_to_float_and_config_sections_round_trip():
    with pytest.raises(ValueError, match="ratio=True: must be a number"):
        Example(ratio=True)
    spec = get_method("hobs")
    c = spec.default_config()
    c.damp = 0
    opts = spec.options(c)  # an int for a float option: widened
    assert opts.damp == 0.0 and isinstance(opts.damp, float) and opts.scorer.damp == opts.compensator.damp
    assert opts.allocation == "global" and opts.allocator.min_ratio == 0.1 and opts.allocator.normalize == "cost"


@functools.cache
def _setup():
    model = models.build(NAME, num_classes=10, in_channels=1)
    variables = models.random_variables(model, SHAPE, seed=0)
    rng = np.random.default_rng(0)
    calib = Calibration(rng.normal(size=(32,) + SHAPE[1:]).astype(np.float32),
                        rng.integers(0, 10, 32).astype(np.int32))
    task = make_task("magnitude", NAME, variables, target=0.5, calib=calib)
    return model, variables, calib, task


def _mse(model, variables, dense, x):
    return float(np.mean((np.asarray(model.apply(variables, x, train=False)) - dense) ** 2))


def test_a_hybrid_is_one_line_and_obs_compensation_helps_magnitude_selection():
    model, variables, calib, base = _setup()
    hybrid = MethodSpec("l2sq_obs_test", scorer="l2sq", allocators=("uniform",), compensator="obs")
    opts = dict(progress=False, propagate=0)
    task = dataclasses.replace(base, options=hybrid.options(opts))
    outcome = hybrid.prune(task)
    # Same scorer and allocation as hobs_nohessian (uniform): the same plan, compensated.
    plain = get_method("hobs_nohessian").prune(dataclasses.replace(base, options=dict(allocation="uniform")))
    assert outcome.plan.to_json() == plain.plan.to_json()
    assert set(outcome.info["timings"]) == {"calibration", "inverses", "compensation"}
    # The registered hybrid: magnitude's plan with H-OBS's compensation (the refit off: the
    # compensation alone must already bring the outputs closer to the dense network's).
    mag = run("magnitude", dataclasses.replace(base, options=dict(allocation="uniform")))
    mobs = run("magnitude_obs", dataclasses.replace(base, options=dict(allocation="uniform", progress=False,
                                                                       propagate=0)))
    assert mobs.outcome.plan.to_json() == mag.outcome.plan.to_json()
    x = calib.images[:32]
    dense = np.asarray(model.apply(variables, x, train=False))
    assert _mse(mobs.model, mobs.variables, dense, x) < 0.5 * _mse(mag.model, mag.variables, dense, x)


def test_parts_with_conflicting_defaults_are_refused_in_one_line():
    bad = MethodSpec("conflict_test", scorer="obs", allocators=("uniform",), compensator="obs",
                     defaults=dict(nonexistent=1))
    with pytest.raises(ValueError, match="default for unknown option 'nonexistent'"):
        bad.default_config()
    with pytest.raises(ValueError, match="unknown allocator 'no_such_allocator'"):
        MethodSpec("x_test", scorer="l2", allocators=("no_such_allocator",)).default_config()
    # R-SPAR's reward needs the compensator's per-count changes; UDFC has none: refused
    # before any work.
    spec = MethodSpec("udfc_rspar_test", scorer="l2", allocators=("rspar",), compensator="udfc")
    task = dataclasses.replace(_setup()[3], options=spec.smoke_config())
    with pytest.raises(ValueError, match="^udfc_rspar_test: allocator 'rspar' needs per-count compensations, "
                                         "which compensator 'udfc' cannot precompute$"):
        spec.prune(task)


@dataclasses.dataclass(frozen=True)
class ShrinkOptions(Options):
    steps: int = 3
    weight: float = 0.1


class Shrink:
    """A training-time part giving a loss term (the shape JTP / Bi-Level / StructAlign take)."""

    name = "shrink_test"
    Options = ShrinkOptions
    needs_data = False

    def steps(self, o):
        return o.steps

    def transform(self, task, o):
        return None

    def loss(self, task, o):
        import jax
        return lambda params: o.weight * sum(jax.numpy.sum(p ** 2) for p in jax.tree.leaves(params))

    def info(self, o):
        return {"shrink_steps": o.steps}


def test_a_regularizer_trains_through_the_callback_before_scoring():
    """The training engine gets the part's loss term and transform through the task's
    callback only; the scorer then sees the trained variables."""
    from hobs_jax.methods import PARTS, register_part

    _, variables, _, base = _setup()
    if "shrink_test" not in PARTS["regularizer"]:
        register_part("regularizer", Shrink())
    calls = []

    def finetune(v, steps, extra_loss=None, extra_transform=None):
        calls.append((steps, extra_loss is not None, extra_transform))
        # a stand-in for training: the network's stream channels 0-3 die
        out = {k: dict(v[k]) for k in v}
        out["params"] = {**v["params"], "conv1": {"kernel": np.asarray(v["params"]["conv1"]["kernel"]) * np.r_[
            np.zeros(4), np.ones(12)].astype(np.float32)}}
        return out

    spec = MethodSpec("shrink_magnitude_test", regularizer="shrink_test", scorer="l2", allocators=("uniform",))
    task = dataclasses.replace(base, options=spec.options(dict(steps=5)), finetune=finetune)
    outcome = spec.prune(task)
    assert calls == [(5, True, None)]
    assert outcome.info["shrink_steps"] == 5
    np.testing.assert_array_equal(np.asarray(outcome.variables["params"]["conv1"]["kernel"])[..., :4], 0)
    with pytest.raises(ValueError, match="needs a training callback"):
        get_method("depgraph").prune(dataclasses.replace(base, options=dict(sparse_steps=3), finetune=None))


class PhaseLog:
    def __init__(self):
        self.events = []

    def enter(self, phase, facts):
        self.events.append(("enter", phase, dict(facts)))

    def exit(self, phase, wall, cpu, facts):
        assert wall >= 0 and cpu >= 0
        self.events.append(("exit", phase, dict(facts)))


def test_timing_hook_reports_every_phase_and_each_groups_selection():
    _, _, _, base = _setup()
    spec = get_method("hobs")
    task = dataclasses.replace(base, options=spec.options(dict(progress=False, propagate=0, allocation="uniform")))
    with obs.listen(PhaseLog()) as log:
        outcome = spec.prune(task)
    exits = [e for e in log.events if e[0] == "exit"]
    assert {p for _, p, _ in exits} == set(outcome.info["timings"]) == {"calibration", "inverses", "selection",
                                                                        "compensation"}
    groups = [f for _, p, f in exits if p == "selection"]
    assert [f["group"] for f in groups] == list(task.cost.group_ids)
    assert all(set(f) == {"group", "size", "removed", "consumers", "max_d"} for f in groups)
    assert len(log.events) == 2 * len(exits)
    t = obs.Timer()  # the hook is gone outside the block
    with t("x"):
        pass
    assert len(log.events) == 2 * len(exits) and set(t.times) == {"x"}


def test_scores_from_an_importance_remove_in_the_plans_order():
    s = Scores.from_importance({3: np.array([0.5, 0.1, 0.5, 0.9])})
    assert s.order[3].tolist() == [1, 2, 0, 3]  # ties: the higher index goes first
    assert s.losses[3].tolist() == [0.1, 0.5, 0.5, 0.9]
    assert get_part("allocator", "rspar").name == "rspar"  # declared by name, imported on use


def _package(module: str) -> str:
    """``hobs_jax.graph.trace`` -> ``hobs_jax.graph``; a top-level module is its own package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hobs_jax" and len(parts) > 2 else module


def _private_imports(path: str, package: str | None = None) -> list[str]:
    """``from pkg.mod import _name`` and ``import ... ; mod._name`` across packages (a
    module may use its own package's private helpers: ``package`` is the file's)."""
    tree = ast.parse(open(path).read())
    bad, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            same = package is not None and _package(node.module) == package
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__") and not same:
                    bad.append(f"from {node.module} import {a.name}")
                else:
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.value.id not in ("np", "jax", "jnp", "os", "sys")):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


#: Exceptions, per file (none today).
KNOWN: dict[str, list[str]] = {}


def test_no_module_or_benchmark_imports_another_packages_private_names():
    found = {}
    for top in ("hobs_jax", "benchmarks"):
        for d, _, files in os.walk(os.path.join(REPO_ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), REPO_ROOT)
                    package = _package(rel[:-3].replace(os.sep, ".")) if top == "hobs_jax" else None
                    bad = [b for b in _private_imports(os.path.join(d, f), package) if b not in KNOWN.get(rel, [])]
                    if bad:
                        found[rel] = bad
    assert not found, found


def _hobs_imports(path: str) -> set[str]:
    """The hobs_jax sub-packages a module imports (at any depth of the file)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for n in names:
            parts = n.split(".")
            if parts[0] == "hobs_jax" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_rooms_import_only_what_they_may():
    """methods knows R-SPAR by name only; R-SPAR (an allocator) does not import methods;
    the OBS engine uses stats (and the options base), nothing above."""
    def imports(room):
        d = os.path.join(REPO_ROOT, "hobs_jax", room)
        return {f: _hobs_imports(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".py")}

    assert not [f for f, i in imports("methods").items() if "rspar" in i]
    # rspar/latency.py (the latency table, owned by the any-model work of issue 17) still
    # reads group roles from methods.obs_groups.
    assert not [f for f, i in imports("rspar").items() if "methods" in i and f != "latency.py"]
    assert {m for i in imports("obs").values() for m in i} <= {"obs", "stats", "options"}
