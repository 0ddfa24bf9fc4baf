"""Equal training budgets (hobs_jax.experiments.equal_budget): the fine-tuning a row gets
is the budget minus its method's own training, and a table refuses rows with different
budgets or too few seeds, in one line."""

import json

import pytest

from hobs_jax.experiments.equal_budget import budget_steps, finetune_steps, summarize


def _row(method="jtp", seed=0, budget=1.0, final=0.9, target=0.5):
    return {"model": "resnet56", "method": method, "target_macs_ratio": target, "seed": seed,
            "budget_epochs": budget, "acc_dense": 0.95, "acc_bn_recalibrated": 0.8, "acc_final": final,
            "macs_ratio": 0.5, "params_ratio": 0.5, "method_training_steps": 470,
            "seconds": {"prune": 3.0, "method_training": 2.0, "finetune": 3.0}}  # prune includes its training


def test_budget_counts_the_methods_own_training():
    assert budget_steps(1.0) == 468 and budget_steps(2.5) == 1170
    assert finetune_steps(1.0, 0) == 468
    assert finetune_steps(1.0, 470 - 2) == 0
    with pytest.raises(ValueError, match=r"^jtp: its own training \(470 steps\) exceeds the budget of 1 epochs"):
        finetune_steps(1.0, 470, "jtp")
    with pytest.raises(ValueError, match="budget_epochs=0"):
        budget_steps(0)


def test_summary_mean_std_and_refusals():
    rows = [_row(seed=s, final=f) for s, f in ((0, 0.90), (1, 0.92), (2, 0.94))]
    (s,) = summarize(rows)
    assert s["acc_final_mean"] == pytest.approx(0.92) and s["acc_final_std"] == pytest.approx(0.02)
    assert s["seeds"] == [0, 1, 2] and s["seconds_mean"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"different budgets \[1.0, 2.0\]") as e:
        summarize(rows + [_row(method="hobs", budget=2.0)])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^hobs at 0.5: 2 seed\(s\) \[0, 1\]; a table with std needs at least 3"):
        summarize(rows + [_row(method="hobs", seed=0), _row(method="hobs", seed=1)])


def test_the_equal_budget_table_goes_through_result_table_and_refuses_an_off_target_row(tmp_path):
    from hobs_jax.experiments import equal_budget, studies
    from hobs_jax.experiments.table import SCHEMA, ResultTable

    rows = [dict(model="resnet56", method=m, target_macs_ratio=0.5, seed=s, budget_epochs=1.0, acc_dense=0.947,
                 acc_bn_recalibrated=0.9 + 0.01 * s, acc_final=0.93 + 0.001 * s, macs_ratio=0.5 + off,
                 params_ratio=0.5, method_training_steps=0, seconds={"prune": 10.0})
            for m, off in (("hobs", 0.001), ("magnitude", 0.03)) for s in range(3)]
    equal_budget.write_report(str(tmp_path / "t1"), "cmd", rows, summarize(rows), 3)
    t = ResultTable.read(str(tmp_path / "t1.json"))
    assert t.to_dict()["schema"] == SCHEMA and [r["method"] for r in t.rows] == ["hobs"]
    assert t.refused[0]["method"] == "magnitude" and (tmp_path / "records" / "t1.json").exists()
    assert "93.10 ± 0.10" in (tmp_path / "t1.md").read_text()
    (tmp_path / "t1.md").unlink()
    studies.render_prefix(equal_budget, str(tmp_path / "t1"))  # rebuilt from the record alone
    assert "93.10 ± 0.10" in (tmp_path / "t1.md").read_text()


def test_a_distilling_recipe_distils_the_methods_own_training_too(tmp_path):
    """Every training step of a row follows the one recipe: with distillation on, the
    training-time methods' own rounds (TrainingCallback) distil from the dense network
    instead of failing for want of a teacher; without dense variables it says so."""
    import jax

    from hobs_jax import models
    from hobs_jax.experiments import common
    from hobs_jax.experiments.equal_budget import TrainingCallback
    from hobs_jax.experiments.recovery import parse_recipe

    model = models.build("resnet20", num_classes=10, in_channels=1, widths={"conv1": 4})
    dense = models.random_variables(model, (1, 28, 28, 1), seed=0)
    overrides = dict(parse_recipe("kd+lr1e-3+warmup"), batch_size=8)
    cb = TrainingCallback("resnet20", model, common.source(), overrides, seed=0, workdir=str(tmp_path),
                          dense_vars=dense)
    out = cb(dense, 2)
    assert cb.steps == 2 and jax.tree.structure(out) == jax.tree.structure(dense)
    bare = TrainingCallback("resnet20", model, common.source(), overrides, seed=0, workdir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="no dense variables to distil from"):
        bare(dense, 1)


def test_the_table_checks_issue_20s_goals_and_shows_one_seed_without_a_std(tmp_path):
    from hobs_jax.experiments import equal_budget

    def row(method, final, curve, bn=0.94):
        return dict(model="resnet56", method=method, target_macs_ratio=0.5, seed=0, budget_epochs=1.0,
                    acc_dense=0.9471, acc_oneshot=0.93, acc_bn_recalibrated=bn, acc_final=final, macs_ratio=0.5,
                    params_ratio=0.5, method_training_steps=0, seconds={"prune": 1.0}, acc_by_steps=curve)
    rows = [row("hobs", 0.9460, {"50": 0.9380, "200": 0.9450}), row("jtp", 0.9300, {"50": 0.92, "200": 0.925})]
    equal_budget.write_report(str(tmp_path / "t1"), "cmd", rows, summarize(rows, min_seeds=1), 1)
    md = (tmp_path / "t1.md").read_text()
    assert "± nan" not in md and "| 93.80 | 94.50 | **94.60** |" in md
    assert "H-OBS or R-SPAR has the best mean final top-1: **met**" in md
    assert "hobs: the fine-tuning curve never drops below the one-shot point: **NOT met** (94.00 -> 93.80" in md
    assert "hobs: final within 0.2 points of dense: **met**" in md
    assert md.startswith("# Table 1: every method at equal training budgets (1 epoch after")

    # A page of the same study that is not Table 1 (a recipe check) keeps its own heading,
    # from the record, when rebuilt from it.
    equal_budget.write_report(str(tmp_path / "check"), "cmd", rows, summarize(rows, min_seeds=1), 1,
                              title="A recipe check")
    (tmp_path / "check.md").unlink()
    equal_budget.main(["--out", str(tmp_path / "check"), "--render-only"])
    assert (tmp_path / "check.md").read_text().startswith("# A recipe check (1 epoch after the dense checkpoint)")


def test_a_published_record_restores_its_rows_into_a_fresh_workdir(tmp_path):
    from hobs_jax.experiments import equal_budget

    rows = [dict(model="resnet56", method="hobs", target_macs_ratio=0.5, seed=s, budget_epochs=1.0, acc_dense=0.947,
                 acc_bn_recalibrated=0.94, acc_final=0.945, macs_ratio=0.5, params_ratio=0.5,
                 method_training_steps=0, seconds={"prune": 1.0}) for s in (0, 1)]
    equal_budget.write_report(str(tmp_path / "t1"), "cmd", rows, summarize(rows, min_seeds=1), 1)
    record = str(tmp_path / "records" / "t1.json")
    assert equal_budget.restore(record, str(tmp_path / "wd")) == 2
    assert equal_budget.restore(record, str(tmp_path / "wd")) == 0  # present rows are kept, not rewritten
    path = equal_budget.row_path(str(tmp_path / "wd"), "resnet56", "hobs", 0.5, 1, 1.0)
    assert json.loads(open(path).read())["seed"] == 1
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not an equal-budget run record"):
        equal_budget.restore(str(tmp_path / "bad.json"), str(tmp_path / "wd"))


@pytest.mark.parametrize("argv,message", [
    (["--methods", "jtp"], r"jtp: its own training \(470 steps\) exceeds the budget of 1 epochs \(468 steps\)"),
    (["--methods", "jtp", "--set", "hobs.rounds=5"], r"'hobs' is not one of --methods"),
    (["--methods", "jtp", "--set", "jtp.roundz=5"], r"jtp has no option 'roundz'"),
    (["--methods", "jtp", "--set", "jtp.rounds"], r"use METHOD.KEY=VALUE"),
    (["--methods", "tp-l1-everywhere"], r"--methods: row 'tp-l1-everywhere': use tp-CRITERION-local or"),
    (["--methods", "tp-l1-local", "--set", "tp-l1-local.x=1"], r"Torch-Pruning rows take no options"),
    (["--methods", "hobs", "--latency", "xla,tvm"], r"--latency xla,tvm: unknown runtime 'tvm'; known: xla"),
])
def test_bad_method_options_and_budgets_fail_before_any_compute(tmp_path, argv, message):
    from hobs_jax.experiments import equal_budget

    with pytest.raises(SystemExit, match=message):
        equal_budget.main([*argv, "--seeds", "0", "--min-seeds", "1", "--workdir", str(tmp_path),
                           "--out", str(tmp_path / "t")])
    assert not any(tmp_path.iterdir())  # nothing computed, nothing written


def test_the_planned_own_training_of_each_method():
    from hobs_jax.experiments.equal_budget import planned_steps

    assert planned_steps("jtp", {}) == 470 and planned_steps("structalign", {"rounds": 5}) == 235
    assert planned_steps("depgraph", {"sparse_steps": 100}) == 100 and planned_steps("hobs", {}) == 0


def test_a_cached_row_made_with_other_options_is_refused_not_reused(tmp_path):
    from hobs_jax.experiments import equal_budget

    path = equal_budget.row_path(str(tmp_path), "resnet56", "jtp", 0.5, 0, 1.0)
    equal_budget.common.write_json(path, {"method": "jtp", "options": {"rounds": 5}})
    with pytest.raises(SystemExit, match=r"made with jtp options \{'rounds': 5\}, asked \{'rounds': 4\}"):
        equal_budget.main(["--methods", "jtp", "--targets", "0.5", "--set", "jtp.rounds=4", "--seeds", "0",
                           "--min-seeds", "1", "--workdir", str(tmp_path), "--out", str(tmp_path / "t")])


@pytest.mark.parametrize("cached, asked", [
    ({"command": "python -m hobs_jax.experiments.equal_budget --methods hobs --recipe kd+lr1e-3+warmup"},
     "kd+lr3e-3+warmup"),  # a row cached before rows stored their recipe: read from its command
    ({"recipe": {"lr": 0.003}}, "lr=0.001"),
    ({"recipe": {}}, "kd"),
])
def test_a_cached_row_made_with_another_recipe_is_refused_not_reused(tmp_path, cached, asked):
    from hobs_jax.experiments import equal_budget

    path = equal_budget.row_path(str(tmp_path), "resnet56", "hobs", 0.5, 0, 1.0)
    equal_budget.common.write_json(path, dict({"method": "hobs", "options": {}}, **cached))
    with pytest.raises(SystemExit, match=r"made with the fine-tuning recipe .*, asked .*--recipe"):
        equal_budget.main(["--methods", "hobs", "--targets", "0.5", "--recipe", asked, "--seeds", "0",
                           "--min-seeds", "1", "--workdir", str(tmp_path), "--out", str(tmp_path / "t"),
                           "--latency", ""])


def test_the_recipe_of_a_cached_row():
    from hobs_jax.experiments.equal_budget import row_recipe

    assert row_recipe({"recipe": {"lr": 0.003}}) == {"lr": 0.003}
    assert row_recipe({"command": "x --recipe=kd+lr1e-3+warmup"}) == {"kd.enabled": True, "lr": 0.001,
                                                                      "warmup_fraction": 0.1}
    assert row_recipe({"command": "x --methods hobs"}) == {} == row_recipe({})


def test_a_row_stopped_in_its_methods_training_is_not_written_and_resumes(tmp_path, monkeypatch):
    """SIGTERM during a training-time method's own round: the round saves its step and the
    row raises Interrupted instead of pruning a half-trained network into a finished row;
    the same call again resumes the round from its checkpoint."""
    from hobs_jax import models
    from hobs_jax.experiments import common
    from hobs_jax.experiments.equal_budget import TrainingCallback
    from hobs_jax.interrupt import Interrupted
    from hobs_jax.train import read_metrics

    model = models.build("resnet20", num_classes=10, in_channels=1, widths={"conv1": 4})
    dense = models.random_variables(model, (1, 28, 28, 1), seed=0)
    overrides = {"batch_size": 8, "log_every": 1}
    monkeypatch.setenv("HOBS_JAX_FAULT", "method_training.step@1=term")
    cb = TrainingCallback("resnet20", model, common.source(), overrides, seed=0, workdir=str(tmp_path))
    with pytest.raises(Interrupted, match=r"at step 1 of 3 \(checkpoint saved\)"):
        cb(dense, 3)
    monkeypatch.delenv("HOBS_JAX_FAULT")
    again = TrainingCallback("resnet20", model, common.source(), overrides, seed=0, workdir=str(tmp_path))
    again(dense, 3)
    (resume,) = read_metrics(str(tmp_path / "method_training_0"), "resume")
    assert resume["from_step"] == 1 and again.rounds == 1


def test_row_seconds_count_the_methods_training_once():
    from hobs_jax.experiments.equal_budget import row_seconds

    assert row_seconds({"seconds": {"prune": 928.8, "method_training": 582.6, "finetune": 490.6}}) == \
        pytest.approx(1419.4)


def test_latency_columns_are_the_mean_speedup_over_seeds_and_a_dash_when_not_timed(tmp_path):
    from hobs_jax.experiments import equal_budget

    def row(method, seed, lat):
        return dict(model="resnet56", method=method, target_macs_ratio=0.5, seed=seed, budget_epochs=1.0,
                    acc_dense=0.947, acc_bn_recalibrated=0.94, acc_final=0.945, macs_ratio=0.5, params_ratio=0.5,
                    method_training_steps=0, seconds={"prune": 1.0}, latency_speedup=lat)
    rows = [row("hobs", 0, {"xla@1": 1.2, "xla@64": 1.5, "onnxruntime@64": 1.25}),
            row("hobs", 1, {"xla@1": 1.4, "xla@64": 1.7, "onnxruntime@64": 1.35}), row("magnitude", 0, None)]
    assert equal_budget.time_rows([dict(r) for r in rows], "unused", [], str(tmp_path)) == 0
    equal_budget.write_report(str(tmp_path / "t1"), "cmd", rows, summarize(rows, min_seeds=1), 1)
    md = (tmp_path / "t1.md").read_text()
    assert "| XLA b1 | XLA b64 | ORT b1 | ORT b64 |" in md
    lines = {ln.split("|")[2].strip(): ln for ln in md.splitlines() if ln.startswith("| resnet56")}
    assert lines["hobs"].rstrip().endswith("| 1.30x | 1.60x | - | 1.30x |")
    assert lines["magnitude"].rstrip().endswith("| - | - | - | - |")


def test_a_torch_pruning_row_is_cut_by_the_peers_code_and_measured_by_ours():
    """``tp-CRITERION-SCOPE`` rows: Torch-Pruning's own pruner (in a spawned process) on the
    torch-converted network, back as a Flax model whose MACs ratio our counter gives; no
    own training, no options."""
    pytest.importorskip("torch_pruning")
    import argparse

    from hobs_jax import macs, models
    from hobs_jax.experiments import common
    from hobs_jax.experiments.equal_budget import planned_steps, prune_row, row_options

    model = models.build("resnet20", num_classes=10, in_channels=1)
    dense = models.random_variables(model, (1, 28, 28, 1), seed=0)
    calib = common.calibration(common.source(), 64, 0)
    args = argparse.Namespace(model="resnet20", smoke=False, options={})
    cut = prune_row(args, "tp-l1-local", 0.5, 0, model, dense, calib, cb=None)
    assert cut.framework == "torch-pruning" and cut.plan is None and abs(cut.macs_ratio - 0.5) <= 0.01 * 0.5
    ours = macs.count(cut.model, cut.variables, (1, 28, 28, 1)).macs / macs.count(model, dense, (1, 28, 28, 1)).macs
    assert cut.macs_ratio == pytest.approx(ours)
    assert set(cut.info) == {"pruning_ratio", "attempts", "within_tol", "split"}
    assert cut.info["split"] is None  # one ratio landed within 1%: no split
    assert planned_steps("tp-l1-local", {}) == 0 and row_options(args, "tp-l1-local") == {}


def test_cached_only_tabulates_the_rows_made_so_far_and_lists_the_rest(tmp_path):
    from hobs_jax.experiments import equal_budget

    row = dict(model="resnet56", method="hobs", target_macs_ratio=0.5, seed=0, budget_epochs=1.0, acc_dense=0.947,
               acc_bn_recalibrated=0.94, acc_final=0.945, macs_ratio=0.5, params_ratio=0.5,
               method_training_steps=0, seconds={"prune": 1.0}, options={})
    equal_budget.common.write_json(equal_budget.row_path(str(tmp_path), "resnet56", "hobs", 0.5, 0, 1.0), row)
    argv = ["--methods", "hobs,magnitude", "--targets", "0.5", "--seeds", "0", "--min-seeds", "1", "--latency", "",
            "--cached-only", "--workdir", str(tmp_path), "--out", str(tmp_path / "t")]
    equal_budget.main(argv)
    md = (tmp_path / "t.md").read_text()
    assert "| resnet56 | hobs |" in md and "| resnet56 | magnitude |" not in md
    assert "Rows of this command's grid not made yet (1): magnitude at 0.5 seed 0." in md
    with pytest.raises(SystemExit, match="none of the grid's rows is in the row cache"):
        equal_budget.main(["--methods", "magnitude", *argv[2:]])


def test_restored_rows_without_a_network_keep_their_earlier_latency_and_are_listed(tmp_path):
    """A fresh checkout restores rows (with their speedups) but not their networks: a
    republish keeps those speedups, marked as carried over, instead of blanking them."""
    from hobs_jax.experiments import row_latency

    earlier = {"runtimes": ["xla"], "out_dir": "runs/table1/latency", "date": "2026-12-07"}
    carried = dict(method="hobs", target_macs_ratio=0.5, seed=0, model_dir=str(tmp_path / "gone"),
                   latency_speedup={"xla@1": 1.3}, latency_timing=earlier)
    untimed = dict(method="udfc", target_macs_ratio=0.5, seed=0, model_dir="", latency_speedup={"xla@1": 9.9})
    rows = [carried, untimed]
    assert row_latency.time_rows(rows, "unused", ["xla"], str(tmp_path / "lat")) == 0
    assert carried["latency_speedup"] == {"xla@1": 1.3} and carried["latency_timing"]["carried_over"]
    assert untimed["latency_speedup"] is None  # a speedup with no timing record is not trusted
    assert row_latency.carried_rows(rows) == [carried]
    assert "carried_over" not in earlier  # the cached row's own timing record is not changed
    assert "the run of 2026-12-07 on an unrecorded device: hobs at 0.5 seed 0" in row_latency.carried_note(rows)
    carried["latency_timing"] = {"carried_over": True, "device": "CPU X (avx2), 2 cores, load 3.10; no GPU"}
    assert "the run on CPU X (avx2), 2 cores: hobs at 0.5 seed 0" in row_latency.carried_note(rows)
    # a cell with a seed timed in this run averages this run's timings only
    fresh = dict(carried, seed=1, latency_speedup={"xla@1": 1.5}, latency_timing={"out_dir": "now"})
    assert row_latency.latency_mean([carried, fresh]) == {"xla@1": 1.5}
    assert row_latency.latency_mean([carried]) == {"xla@1": 1.3}


def test_restore_stamps_the_records_device_on_the_rows_timing(tmp_path):
    from hobs_jax.experiments import equal_budget

    row = dict(model="resnet56", method="hobs", target_macs_ratio=0.5, seed=0, budget_epochs=1.0,
               latency_speedup={"xla@1": 1.3}, latency_timing={"date": "2026-12-07"})
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"device": "CPU X (avx512f)", "rows": [row]}))
    assert equal_budget.restore(str(rec), str(tmp_path / "w")) == 1
    path = equal_budget.row_path(str(tmp_path / "w"), "resnet56", "hobs", 0.5, 0, 1.0)
    assert json.load(open(path))["latency_timing"]["device"] == "CPU X (avx512f)"
