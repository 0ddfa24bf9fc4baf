"""The one-shot study's row names and fine-tuning recipes (no pruning, no training)."""

import pytest

from hobs_jax.experiments.studies.oneshot_fmnist import Bench, parse_row
from hobs_jax.experiments.studies.oneshot_report import RESNET_RECIPE, description, recipe_text


def test_row_names_parse_to_methods_allocations_options_and_quanta():
    assert parse_row("tp-l1-global") == {"framework": "torch-pruning", "kind": "l1", "global": True}
    r = parse_row("udfc-uniform@compensate=false")
    assert r["method"] == "udfc" and r["options"] == {"compensate": False, "allocation": "uniform"}
    assert "round_to" not in parse_row("hobs")
    assert parse_row("hobs#8")["round_to"] == 8
    assert parse_row("magnitude-global#16")["options"] == {"allocation": "global"}


@pytest.mark.parametrize("row,match", [
    ("hobs#x", r"'#Q' aligns every kept width to a multiple of Q"),
    ("hobs#0", r"'#Q' aligns"),
    ("tp-l1", r"use tp-CRITERION-local or tp-CRITERION-global"),
    ("hobs@nosuchoption=1", r"has no option 'nosuchoption'"),
    ("hobs-sideways", r"'-sideways' is not an allocation"),
])
def test_bad_row_names_are_one_line_errors(row, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_row(row)
    assert "\n" not in str(e.value)


def test_each_model_fine_tunes_with_its_own_config_recipe():
    resnet = Bench.recipe_of("configs", "resnet56")
    vit = Bench.recipe_of("configs", "vit_tiny_p4")
    assert recipe_text(resnet) == RESNET_RECIPE  # the committed tables' wording
    assert vit.optimizer == "adamw" and recipe_text(vit).startswith("AdamW, lr 0.0001")
    one = description({"resnet56": recipe_text(resnet)})[0]
    assert f"one recipe for every row ({RESNET_RECIPE})" in one
    both = description({"resnet56": recipe_text(resnet), "vit_tiny_p4": recipe_text(vit)})[0]
    assert "resnet56: SGD" in both and "vit_tiny_p4: AdamW" in both


def test_method_training_dir_takes_methods_with_nested_options(tmp_path):
    """R-SPAR's options hold a nested section (its agent): the shared method-training folder
    is still named by a digest of every option but the allocation's."""
    import types

    bench = types.SimpleNamespace(args=types.SimpleNamespace(workdir=str(tmp_path)))
    a = Bench.method_training_dir(bench, "resnet20", parse_row("rspar"))
    b = Bench.method_training_dir(bench, "resnet20", parse_row("depgraph-global"))
    assert a.startswith(str(tmp_path / "method_training" / "resnet20" / "rspar-"))
    assert a != b and Bench.method_training_dir(bench, "resnet20", parse_row("rspar")) == a


def test_seeds_keep_the_old_row_layout_and_report_mean_std_and_the_rspar_goal(tmp_path, monkeypatch):
    """Seed 0 rows stay at rows/MODEL/TARGET/ROW.json (earlier workdirs keep theirs); other
    seeds go under seedS/; the report tabulates the first seed and writes OUT_seeds with mean
    and std and the per-seed R-SPAR-vs-global goal."""
    import json
    import os

    from hobs_jax.experiments.common import write_json as _write_json
    from hobs_jax.experiments.studies.oneshot_cache import cached_rows, row_path
    from hobs_jax.experiments.studies.oneshot_report import write_report

    assert row_path("w", "m", 0.5, "hobs") == os.path.join("w", "rows", "m", "0.5", "hobs.json")
    assert row_path("w", "m", 0.5, "hobs", 2) == os.path.join("w", "rows", "m", "0.5", "seed2", "hobs.json")
    accs = {("hobs", 0): 0.80, ("hobs", 1): 0.81, ("rspar", 0): 0.82, ("rspar", 1): 0.80}
    for (row, seed), acc in accs.items():
        rec = {"model": "mobilenet_v2_small", "method": row, "framework": "hobs_jax",
               "target_macs_ratio": 0.5, "macs_ratio": 0.5, "params_ratio": 0.6, "acc_dense": 0.88,
               "acc_oneshot": acc - 0.01, "acc_bn_recalibrated": acc, "acc_finetuned": None,
               "acc_by_steps": {}, "latency_speedup": {"batch1": 1.5, "batch64": 1.8}}
        if seed:  # a record from before seeds has no key: it reads as seed 0
            rec["seed"] = seed
        _write_json(row_path(str(tmp_path), "mobilenet_v2_small", 0.5, row, seed), rec)
    rows = cached_rows(str(tmp_path))
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted(accs)
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "docs" / "t2")
    write_report(rows, str(tmp_path), out, "cmd", ["mobilenet_v2_small"], [0.5], ["hobs", "rspar"],
                 seeds=[0, 1])
    main = json.load(open(out + ".json"))
    assert len(main["rows"]) == 2  # the first seed only
    seeds = json.load(open(out + "_seeds.json"))
    by = {r["label"]: r for r in seeds["rows"]}
    assert by["rspar"]["n"] == 2 and abs(by["rspar"]["acc_bn_ms"]["mean"] - 0.81) < 1e-9
    record = json.load(open(tmp_path / "docs" / "records" / "t2.json"))
    assert sorted(r["seed"] for r in record["rows"]) == [0, 0, 1, 1]
    goal = next(g for g in seeds["goals"] if "R-SPAR beats global" in g["text"])
    assert goal["met"] is None and goal["detail"].startswith("2 of 3 seeds")  # undecided below 3 seeds
    assert "seed 1: 80.00% vs 81.00%" in goal["detail"]
    from hobs_jax.experiments.table import ResultTable
    from hobs_jax.experiments.tables.oneshot import add_rspar_goals

    t = ResultTable("g", "g", [])
    add_rspar_goals(t, [dict(r, model="mobilenet_v2_small", target=0.5) for r in record["rows"]], min_seeds=2)
    assert t.goals[0].met is False  # seed 1: R-SPAR below global


def test_a_published_record_restores_into_a_fresh_workdir_and_rebuilds_its_table(tmp_path, monkeypatch):
    """restore_rows writes a run record's rows (refused ones too) into an empty cache with
    their device, source, options and Torch-Pruning ratio; the report rebuilt from them has
    the same rows, option notes and sources, and new seeds join them; rows already cached
    are left alone."""
    import json
    import os

    import pytest

    from hobs_jax.experiments.common import write_json as _write_json
    from hobs_jax.experiments.studies.oneshot_cache import cached_rows, restore_rows, row_path
    from hobs_jax.experiments.studies.oneshot_report import write_report

    first = tmp_path / "first"
    opts = {"allocation": "global", "damp": 0.01}
    for row, acc in (("hobs", 0.80), ("tp-l1-global", 0.40)):
        hobs = row == "hobs"
        _write_json(row_path(str(first), "mobilenet_v2_small", 0.5, row), {
            "model": "mobilenet_v2_small", "method": row, "framework": "hobs_jax" if hobs else "torch-pruning",
            "target_macs_ratio": 0.5, "macs_ratio": 0.5, "params_ratio": 0.6, "acc_dense": 0.88,
            "acc_oneshot": acc - 0.01, "acc_bn_recalibrated": acc, "acc_finetuned": None, "acc_by_steps": {},
            "latency_speedup": {"batch1": 1.5, "batch64": 1.8}, "command": "made-it",
            **({"options": {"allocation": "global"}, "resolved_options": opts} if hobs else {"pruning_ratio": 0.3})})
    _write_json(row_path(str(first), "mobilenet_v2_small", 0.5, "udfc-global"), {
        "model": "mobilenet_v2_small", "method": "udfc-global", "framework": "hobs_jax", "target_macs_ratio": 0.5,
        "refused": "the method refused the model: ReLU6"})
    monkeypatch.chdir(tmp_path)
    rows = ["hobs", "tp-l1-global", "udfc-global"]
    write_report(cached_rows(str(first)), str(first), "a/t", "cmd-a", ["mobilenet_v2_small"], [0.5], rows)
    record = os.path.join("a", "records", "t.json")
    data = json.load(open(record))  # an earlier run: its own source key
    (key,) = data["sources"]
    data["sources"] = {"old@abc": data["sources"][key]}
    data["rows"] = [dict(r, source="old@abc", device="cpu:Old") for r in data["rows"]]
    _write_json(record, data)

    fresh = tmp_path / "fresh"
    assert restore_rows(record, str(fresh)) == 3
    assert restore_rows(record, str(fresh)) == 0  # cached rows are never overwritten
    restored = {r["method"]: r for r in cached_rows(str(fresh))}
    assert restored["hobs"]["resolved_options"] == opts and restored["tp-l1-global"]["pruning_ratio"] == 0.3
    assert restored["udfc-global"]["refused"].endswith("ReLU6") and restored["hobs"]["command"] == "made-it"
    rec = dict(restored["hobs"], seed=1, acc_bn_recalibrated=0.82, source=None, device=None, source_entry=None,
               restored_from=None)
    _write_json(row_path(str(fresh), "mobilenet_v2_small", 0.5, "hobs", 1), rec)  # a new seed beside them
    write_report(cached_rows(str(fresh)), str(fresh), "b/t", "cmd-b", ["mobilenet_v2_small"], [0.5], rows,
                 seeds=[0, 1])
    a, b = json.load(open("a/t.json")), json.load(open("b/t.json"))
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("source", "device")} for r in rows]
    assert strip(a["rows"]) == strip(b["rows"])  # the first seed's table, row for row
    md_a, md_b = (open(f"{d}/t.md").read() for d in "ab")
    for line in md_a.split("## Sources")[0].splitlines():
        assert line in md_b or "t_seeds" in line or line.startswith("Context:")
    rb = json.load(open("b/records/t.json"))
    assert "old@abc" in rb["sources"] and len(rb["sources"]) == 2
    assert {r["source"] for r in rb["rows"] if r.get("seed", 0) == 0} == {"old@abc"}
    assert [r["source"] for r in rb["rows"] if r.get("seed") == 1] == [k for k in rb["sources"] if k != "old@abc"]
    seeds = json.load(open("b/t_seeds.json"))  # accuracies over seeds run on two machines
    assert seeds["context_keys"] == ["dataset", "split"]
    assert "measured on `cpu:Old`: hobs seed 0; tp-l1-global seed 0" in seeds["notes"]
    assert any(n.startswith("measured on `cpu:") and n.endswith(": hobs seed 1") for n in seeds["notes"])
    assert json.load(open("b/t.json"))["context"]["device"] == "cpu:Old"  # the first seed's table: one device
    with pytest.raises(SystemExit, match="not a run record"):
        _write_json(str(tmp_path / "x.json"), [1])
        restore_rows(str(tmp_path / "x.json"), str(fresh))


def test_the_fine_tuning_goal_is_judged_at_each_step_other_rows_reached():
    from hobs_jax.experiments.tables import oneshot

    def row(label, method, bn, steps):
        return {"model": "vit_tiny_p4", "label": label, "method": method, "framework": "hobs_jax", "target": 0.5,
                "macs_ratio": 0.5, "params_ratio": 0.5, "acc_dense": 0.82, "acc_oneshot": bn, "acc_bn_recalibrated": bn,
                "acc_by_steps": steps, "dataset": "fashion_mnist", "split": "test", "device": "cpu:x"}
    t = oneshot.build("t", "t", [row("hobs", "hobs", 0.80, {"50": 0.79, "200": 0.80}),
                                 row("rspar", "rspar", 0.81, {"50": 0.85}),  # H-OBS's own family: not a rival
                                 row("tp-l1-global", "torch-pruning", 0.50, {"50": 0.76, "200": 0.81}),
                                 row("magnitude-global", "magnitude", 0.40, {})], goal_model="vit_tiny_p4")
    steps = {g.text.split(" after ")[1]: (g.met, g.detail) for g in t.goals if " after " in g.text}
    assert steps == {"50 fine-tuning steps": (True, "79.00% vs tp-l1-global 76.00%"),
                     "200 fine-tuning steps": (False, "80.00% vs tp-l1-global 81.00%")}


def test_the_paired_test_skips_a_better_row_run_on_one_seed():
    from hobs_jax.experiments.tables import stability

    def row(label, seed, acc):
        return {"model": "m", "target": 0.5, "label": label, "method": label, "seed": seed, "macs_ratio": 0.5,
                "acc_oneshot": acc, "acc_bn_recalibrated": acc, "dataset": "d", "split": "test", "device": "cpu:x"}
    rows = [row("a", s, 0.90 + 0.01 * s) for s in range(3)] + [row("b", s, 0.88 + 0.005 * s) for s in range(3)]
    t = stability.build("s", "s", rows + [row("one", 0, 0.905)])
    (test,) = t.meta["paired_tests"]
    assert (test["a"], test["b"], test["seeds"]) == ("a", "b", [0, 1, 2])


def test_rows_timed_on_two_cpus_share_a_table_that_names_each_rows_device():
    from hobs_jax.experiments.tables import oneshot

    def row(label, bn, device, b64):
        return {"model": "efficientnet_b0_small", "label": label, "method": label, "framework": "hobs_jax",
                "target": 0.5, "macs_ratio": 0.5, "params_ratio": 0.6, "acc_dense": 0.76, "acc_oneshot": bn,
                "acc_bn_recalibrated": bn, "latency_speedup": {"batch1": 1.5, "batch64": b64},
                "dataset": "fashion_mnist", "split": "test", "device": device}
    one = oneshot.build("t", "t", [row("hobs", 0.75, "cpu:Intel Xeon:avx512f", 1.6)], goal_model=None)
    assert one.context["device"] == "cpu:Intel Xeon:avx512f" and "timed_on" not in [c.key for c in one.columns]
    t = oneshot.build("t", "t", [row("hobs", 0.75, "cpu:Intel Xeon:avx512f", 1.6),
                                 row("depgraph", 0.40, "cpu:AMD EPYC:avx512f", 1.8)], goal_model=None)
    assert "device" not in t.context and [r["timed_on"] for r in t.rows] == ["Intel Xeon", "AMD EPYC"]
    md = t.to_markdown()
    assert "| hobs | Intel Xeon |" in md and "| depgraph | AMD EPYC |" in md and "`AMD EPYC` and `Intel Xeon`" in md
    # Accuracy goals judge rows across devices (accuracy does not depend on the CPU).
    assert any("beats every other" in g.text and g.met for g in t.goals)
