"""The main job: config validation, stage records, resume guard, and one end-to-end run."""

import json
import os
import subprocess
import sys

import pytest

from hobs_jax.pipeline import base_config, run, validate
from hobs_jax.pipeline.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(stages="train,calibrate,prune,finetune,evaluate,benchmark,export"):
    c = base_config("resnet20")
    c.data.source, c.data.image_size, c.data.eval_batch_size = "synthetic", 16, 64
    c.train.steps, c.train.epochs, c.train.batch_size = 6, 0.0, 32
    c.train.checkpoint.every_steps, c.train.progress, c.train.tensorboard = 3, False, False
    c.calibrate.num_images, c.calibrate.batch_size = 64, 32
    c.finetune.steps, c.finetune.epochs, c.finetune.batch_size = 3, 0.0, 32
    c.finetune.progress, c.finetune.tensorboard = False, False
    c.benchmark.batch_sizes, c.benchmark.iters, c.benchmark.warmup = "1,4", 2, 1
    c.benchmark.runtimes, c.benchmark.rounds = "xla", 2  # every runtime: tests/test_bench.py
    c.export.torch = True
    c.stages = stages
    c.lock()
    return c


@pytest.mark.parametrize("key,value,match", [
    ("prune.target", 1.0, r"prune.target=1.0: the kept fraction must be in \(0, 1\)"),
    ("prune.target", 0.0, r"prune.target=0.0"),
    ("train.lr", -0.1, r"train.lr=-0.1: must be > 0"),
    ("prune.method", "nope", r"unknown pruning method 'nope'"),
    ("stages", "train,oops", r"unknown stage 'oops'"),
    ("init.kind", "checkpoint", r"init.path is empty"),
    ("model.name", "resnet5", r"unknown model 'resnet5'"),
    ("model.import_path", "hobs_jax.testing.nets:Nope", r"import path 'hobs_jax.testing.nets:Nope': "
                                                        r"hobs_jax.testing.nets has no 'Nope'"),
    ("model.import_path", "nets", r"import path 'nets': use 'package.module:ClassName'"),
    ("prune.align", "fast", r"prune.align='fast': use 'off', 'auto' or a positive int"),
    ("prune.align", "0", r"prune.align='0': a quantum must be >= 1"),
    ("prune.metric", "flops", r"prune.metric='flops': use one of \('macs', 'params', 'latency'\)"),
    ("prune.latency.runtime", "tensorrt", r"prune.latency.runtime='tensorrt': latency tables are measured in xla"),
    ("prune.latency.measure", 3, r"prune.latency.measure=3 closes a latency target by measurement; prune.metric"),
    ("prune.latency.measure_tol", 1.5, r"prune.latency: measure=0 \(>= 0 allocations\) and measure_tol=1.5"),
])
def test_invalid_values_fail_before_compute(key, value, match):
    c = _tiny()
    with c.unlocked():
        section, _, leaf = key.rpartition(".")
        (c[section] if section else c)[leaf] = value
    with pytest.raises(ValueError, match=match) as e:
        validate(c)
    assert "\n" not in str(e.value)


def test_batch_not_divisible_by_device_count():
    c = _tiny()
    with c.unlocked():
        c.train.batch_size = 30
    with pytest.raises(ValueError, match="train.batch_size=30: not divisible by the device count 4"):
        validate(c, num_devices=4)


def test_locked_config_rejects_misspelled_override():
    from configs import resnet20_fmnist

    c = resnet20_fmnist.get_config()
    with pytest.raises(AttributeError):
        c.prune.targte = 0.4


def test_workdir_refuses_a_different_config(tmp_path):
    c = _tiny()
    wd = Workdir(str(tmp_path))
    wd.finish("train", c, {"ok": 1}, 1.0)
    wd.check_compatible(c, ("train",))  # same config: fine
    with c.unlocked():
        c.train.lr = 0.05
        c.prune.target = 0.3  # prune has not run: irrelevant
    with pytest.raises(ValueError, match=r"stage 'train' made with another config \(train.lr: 0.1 -> 0.05\)"):
        wd.check_compatible(c, ("train", "prune"))


def test_a_stage_stopped_with_one_config_is_not_resumed_with_another(tmp_path):
    """A stage stopped before it finished leaves checkpoints (training, R-SPAR's search,
    measured timings) that the next run resumes; with another config they would silently
    continue the wrong run, so the workdir refuses in one line, naming the fix."""
    c = _tiny()
    wd = Workdir(str(tmp_path))
    wd.start("prune", c)
    wd.check_compatible(c, ("prune",))  # same config: resumes
    with c.unlocked():
        c.benchmark.iters = 3  # not a key prune depends on: irrelevant
    wd.check_compatible(c, ("prune",))
    with c.unlocked():
        c.prune.target = 0.3
    with pytest.raises(ValueError, match=r"stage 'prune' stopped before it finished, started with another config "
                                         r"\(prune.target: 0.5 -> 0.3\).*remove .*prune to start the stage over"):
        wd.check_compatible(c, ("prune",))
    wd.finish("prune", c, {"ok": 1}, 1.0)  # finished: its record decides, as before
    wd.check_compatible(c, ("prune",))


def test_a_prune_stage_whose_method_trained_depends_on_the_finetune_section(tmp_path):
    """A training-time method trains through the finetune recipe, so its prune stage's
    result depends on that section: recorded (``also``), and another value is refused,
    for a stopped stage and a finished one alike; a stage that did not train is free."""
    c = _tiny()
    wd = Workdir(str(tmp_path))
    wd.finish("prune", c, {"ok": 1}, 1.0)
    with c.unlocked():
        c.finetune.lr = 0.123
    wd.check_compatible(c, ("prune",))  # no method training recorded: finetune is not a key of prune
    wd.finish("prune", c, {"ok": 1}, 1.0, also=("finetune",))
    with c.unlocked():
        c.finetune.lr = 0.01
    with pytest.raises(ValueError, match=r"stage 'prune' made with another config \(finetune.lr: 0.123 -> 0.01\)"):
        wd.check_compatible(c, ("prune",))
    os.remove(wd.record_path("prune"))
    wd.start("prune", c, also=("finetune",))  # stopped while the method trained
    wd.start("prune", c)  # resumed, stopped again before the method trains: the dependency stays
    with c.unlocked():
        c.finetune.steps = 7
    with pytest.raises(ValueError, match=r"stopped before it finished, started with another config \(finetune.steps"):
        wd.check_compatible(c, ("prune",))


def test_options_of_a_disabled_ast_section_do_not_block_a_resume(tmp_path):
    """With train.ast.enabled False, an AST option (one added later, or changed) cannot
    change the result: a workdir made without it resumes; enabling AST still refuses."""
    import json as _json

    c = _tiny()
    wd = Workdir(str(tmp_path))
    wd.finish("train", c, {"ok": 1}, 1.0)
    stage = tmp_path / "train" / "stage.json"
    rec = _json.loads(stage.read_text())
    rec["fingerprint"]["train.ast.kp"] = 0.7  # as if stored by an older version
    stage.write_text(_json.dumps(rec))
    with c.unlocked():
        c.train.ast.bn_reestimate = 0
    wd.check_compatible(c, ("train",))
    with c.unlocked():
        c.train.ast.enabled = True
    with pytest.raises(ValueError, match=r"made with another config \(.*train.ast.enabled: False -> True"):
        wd.check_compatible(c, ("train",))


def test_end_to_end_then_rerun_skips_every_stage(tmp_path):
    c = _tiny()
    summary = run(c, str(tmp_path))
    for key in ("model", "method", "acc_dense", "acc_pruned", "macs_ratio", "params_ratio",
                "latency_speedup", "stage_seconds"):
        assert key in summary, key
    assert summary["model"] == "resnet20" and summary["method"] == "magnitude"
    assert abs(summary["macs_ratio"] / 0.5 - 1) <= 0.01
    assert 0 <= summary["acc_pruned"] <= 1 and summary["latency_speedup"] > 0
    assert set(summary["stage_seconds"]) == {"train", "calibrate", "prune", "finetune", "evaluate",
                                             "benchmark", "export"}
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["macs_ratio"] == summary["macs_ratio"]
    assert (tmp_path / "report.md").read_text().startswith("# resnet20: magnitude")
    assert (tmp_path / "export" / "model.pt").exists()
    # The exported checkpoint reloads into a runnable pruned model.
    import hobs_jax
    from hobs_jax import models
    model, variables, meta = hobs_jax.load(str(tmp_path / "export" / "model"))
    assert meta["plan"] is not None and dict(model.widths) != models.default_widths("resnet20")
    # Rerun: every stage is skipped (records unchanged).
    before = {s: os.path.getmtime(tmp_path / s / "stage.json") for s in summary["stage_seconds"]}
    run(c, str(tmp_path))
    after = {s: os.path.getmtime(tmp_path / s / "stage.json") for s in summary["stage_seconds"]}
    assert before == after


def test_zoo_models_keep_their_stage_fingerprints():
    """``model`` became a section (name | import_path + kwargs); a zoo model is still
    fingerprinted as ``model: NAME``, so workdirs made before resume."""
    from hobs_jax.pipeline.workdir import fingerprint

    c = _tiny()
    fp = fingerprint(c, "train")
    assert fp["model"] == "resnet20" and not any(k.startswith("model.") for k in fp)
    # how depthwise convs are computed is not part of a result (workdirs from before resume)
    assert "train.batch_size" in fp and "train.fast_depthwise" not in fp
    with c.unlocked():
        c.model.import_path, c.model.kwargs = "hobs_jax.testing.nets:ResNeXtTiny", '{"stem": 8}'
    fp = fingerprint(c, "train")
    assert fp["model.import_path"] == "hobs_jax.testing.nets:ResNeXtTiny" and fp["model.kwargs"] == '{"stem": 8}'


def test_an_option_added_later_at_its_default_keeps_old_workdirs_resuming():
    """train.stability.spike_sigmas came after workdirs were made: at its default it is not
    in the fingerprint (a stored one without it still matches); set otherwise, it is."""
    from hobs_jax.pipeline.workdir import fingerprint

    c = _tiny()
    assert "train.stability.spike_sigmas" not in fingerprint(c, "train")
    with c.unlocked():
        c.train.stability.spike_sigmas = 4.0
    assert fingerprint(c, "train")["train.stability.spike_sigmas"] == 4.0
    with c.unlocked():  # train.ast.reference (score 'reducible') came later too
        c.train.ast.enabled = True
    assert "train.ast.reference" not in fingerprint(c, "train")
    with c.unlocked():
        c.train.ast.reference = "ref.npy"
    assert fingerprint(c, "train")["train.ast.reference"] == "ref.npy"


@pytest.mark.slow
def test_end_to_end_on_an_imported_module(tmp_path):
    """The pipeline on a linen module of one's own (--config.model.import_path): trained,
    pruned by H-OBS to half the MACs, fine-tuned, evaluated, saved and reloaded by import
    path, exported to ONNX (torch skipped: no torchvision structure)."""
    import numpy as np

    import hobs_jax

    c = _tiny("train,calibrate,prune,finetune,evaluate,export")
    with c.unlocked():
        c.model.import_path, c.model.kwargs = "hobs_jax.testing.nets:ResNeXtTiny", '{"stem": 16}'
        c.prune.method = "hobs"
        c.prune.hobs.progress, c.prune.hobs.propagate = False, 0
        c.export.onnx = True
    summary = run(c, str(tmp_path))
    assert summary["model"] == "hobs_jax.testing.nets:ResNeXtTiny"
    assert abs(summary["macs_ratio"] / 0.5 - 1) <= 0.01
    model, variables, meta = hobs_jax.load(str(tmp_path / "export" / "model"))
    assert meta["spec"]["import_path"] == "hobs_jax.testing.nets:ResNeXtTiny" and meta["plan"] is not None
    out = json.load(open(tmp_path / "export" / "stage.json"))["outputs"]
    assert out["torch"] is None and out["onnx"].endswith("model.onnx")
    x = np.zeros((2, 16, 16, 1), np.float32)
    assert model.apply(variables, x).shape == (2, 10)


def test_main_prints_one_line_error_for_bad_override(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hobs_jax.main", "--config=configs/resnet20_fmnist.py",
                          f"--workdir={tmp_path}", "--config.prune.target=1.5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: prune.target=1.5: the kept fraction must be in (0, 1)")
    assert not os.listdir(tmp_path)  # nothing written before the error


@pytest.mark.slow
def test_training_time_method_through_the_prune_stage(tmp_path):
    """A training-time method (StructAlign, smoke options) runs its rounds through the
    stage's callback (one checkpoint dir per round; with ``finetune.kd`` on, distilling
    from the trained dense network) and its decisions land as JSON."""
    from hobs_jax.methods import get_method

    c = _tiny("train,calibrate,prune")
    with c.unlocked():
        c.prune.method, c.prune.evaluate_oneshot, c.prune.bn_recalibrate = "structalign", False, False
        c.finetune.kd.enabled = True
        c.train.steps = 1
        for key, value in get_method("structalign").smoke_config().items():
            if key in c.prune.structalign:
                c.prune.structalign[key] = value
    run(c, str(tmp_path))
    with open(tmp_path / "prune" / "stage.json") as f:
        rec = json.load(f)
    assert abs(rec["outputs"]["macs_ratio"] / 0.5 - 1) <= 0.01
    assert rec["also"] == ["finetune"] and rec["fingerprint"]["finetune.kd.enabled"] is True
    rounds = c.prune.structalign.rounds
    assert sorted(d for d in os.listdir(tmp_path / "prune") if d.startswith("method_training")) == (
        ["method_training"] + [f"method_training_{i}" for i in range(1, rounds)])
    with open(tmp_path / "prune" / "structalign_decisions.json") as f:
        record = json.load(f)
    assert record["method"] == "structalign" and len(record["decisions"]["rounds"]) == rounds
    assert all(set(m) <= {0, 1} for m in record["decisions"]["masks"].values())



def test_runs_of_one_process_evaluate_each_network_once(tmp_path):
    """Context.evaluate (the prune and evaluate stages' test accuracy) reuses the figure of
    a network it evaluated before in this process (hobs_jax.pipeline.eval_memo: a sweep's
    dense network, the evaluate stage's pruned network): the same figure a fresh
    evaluation gives; one changed weight, or another network, is evaluated afresh."""
    import jax
    import numpy as np

    from hobs_jax import models
    from hobs_jax.pipeline import eval_memo
    from hobs_jax.pipeline.context import Context
    from hobs_jax.train import evaluate

    ctx = Context(_tiny(), Workdir(str(tmp_path)))
    model = ctx.dense_model()
    variables = jax.device_get(models.init(model, jax.random.key(0), ctx.input_shape))
    eval_memo.clear()
    first = ctx.evaluate(model, variables)
    again = ctx.evaluate(model, jax.tree.map(np.copy, variables))  # equal bytes, other arrays
    assert eval_memo.stats() == {"hits": 1, "misses": 1, "entries": 1}
    assert again == first == evaluate(model, variables, ctx.eval_loader())
    moved = jax.tree.map(np.copy, variables)
    moved["params"]["fc"]["bias"][3] += 1.0
    assert ctx.evaluate(model, moved) != first  # computed (a miss), not the memoized figure
    assert eval_memo.stats()["misses"] == 2
    other = models.build("resnet20", num_classes=10, in_channels=1, widths={"conv1": 8})
    assert eval_memo.key(other, variables, "d") != eval_memo.key(model, variables, "d")


def _measured_latency_run(tmp_path, measure):
    """(config, workdir) of a prune stage with a latency target of 0.6 closed by measurement
    in at most ``measure`` timed rounds, after the train and calibrate stages have run. The
    table is synthetic (layer time = MACs, tests/test_aligned_allocation.py), so only the
    timings are real."""
    from hobs_jax.methods import make_task
    from hobs_jax.pipeline.context import Context
    from tests.test_aligned_allocation import _synthetic_table

    wd = str(tmp_path / "wd")
    run(_tiny("train,calibrate"), wd)
    c = _tiny("train,calibrate,prune")
    ctx = Context(c, Workdir(wd))
    _, variables, _ = ctx.load_model("train")
    task = make_task("magnitude", ctx.prunable(variables), target=0.5, input_shape=ctx.input_shape)
    (tmp_path / "table.json").write_text(json.dumps(_synthetic_table(task)))
    with c.unlocked():
        c.prune.metric, c.prune.target, c.prune.align = "latency", 0.6, "off"  # 16-wide: 8s are too coarse
        c.prune.magnitude.allocation = "uniform"  # its floor is its answer: lower asks select again
        c.prune.latency.table, c.prune.latency.measure = str(tmp_path / "table.json"), measure
    return c, wd


def test_prune_stage_closes_a_latency_target_by_measurement(tmp_path):
    """prune.latency.measure=N: the prune stage times each candidate against the trained
    dense network in the table's runtime and batch and records every round (asked of the
    table, measured) in its stage record; the kept network is the round measured closest."""
    c, wd = _measured_latency_run(tmp_path, 2)
    run(c, wd)
    rec = json.loads((tmp_path / "wd" / "prune" / "stage.json").read_text())
    fb = rec["outputs"]["latency_feedback"]
    assert fb["target"] == 0.6 and fb["rounds"][0]["asked"] == 0.6
    assert not any(r["error"] for r in fb["rounds"])  # asks below the uniform floor selected again
    measured = [r["measured"] for r in fb["rounds"] if r["measured"] is not None]  # at most 2 timings
    assert 1 <= len(measured) <= 2 and fb["measured"] == min(measured, key=lambda m: abs(m / 0.6 - 1))
    assert abs(rec["outputs"]["latency_ratio"] / fb["asked"] - 1) <= 0.01
    assert "closed by measurement (asked 0.600 -> measured" in (tmp_path / "wd" / "report.md").read_text()


def test_a_measured_prune_stage_stopped_by_sigterm_resumes_from_its_journal(tmp_path, monkeypatch):
    """SIGTERM while the first candidate is timed (fault point latency_feedback.round@1):
    the round is journaled, the stage stops unrecorded; the rerun replays that round's
    measurement (not timed again) as its first round and finishes the stage."""
    from hobs_jax import interrupt

    c, wd = _measured_latency_run(tmp_path, 3)
    with c.unlocked():
        c.prune.latency.measure_tol = 0.001  # more than one round unless the first lands exactly
    monkeypatch.setenv("HOBS_JAX_FAULT", "latency_feedback.round@1=term")
    with interrupt.stop_signals(), pytest.raises(interrupt.Interrupted, match="after round 1"):
        run(c, wd)
    journal = tmp_path / "wd" / "prune" / "method_state" / "latency_feedback.json"
    first = list(json.loads(journal.read_text())["measured"].values())
    assert len(first) == 1 and not (tmp_path / "wd" / "prune" / "stage.json").exists()
    monkeypatch.delenv("HOBS_JAX_FAULT")
    run(c, wd)
    fb = json.loads((tmp_path / "wd" / "prune" / "stage.json").read_text())["outputs"]["latency_feedback"]
    assert fb["rounds"][0]["measured"] == first[0]  # replayed, bit for bit
    assert len(json.loads(journal.read_text())["measured"]) == sum(r["measured"] is not None for r in fb["rounds"])
