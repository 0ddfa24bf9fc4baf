"""The hobs_blocks studies' rows and tables on fabricated results (no compute): one row per
consumer plus the block, the goals decided from the figures, iso-MACs on the refit's ways,
the committed run records' figures carried unchanged, and an unknown model refused in one
line before any run."""

import json
import os

import pytest

from hobs_jax.experiments.studies import hobs_blocks, hobs_blocks_refit

RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results", "records")


def _block(comp=0.2, uncomp=0.5):
    return {"model": "m", "groups": {"3": ["a.hidden"], "5": ["b.heads"]}, "sizes": {"3": 8, "5": 4},
            "removed": {"3": 4, "5": 2},
            "consumers": {"a/proj": {"compensated": comp, "uncompensated": uncomp, "removed_rows": 4, "rows": 9}},
            "block": {"output": "a:out", "compensated": 0.3, "uncompensated": 0.6},
            "calibration_images": 16, "test_images": 8, "damp": 0.01, "seed": 0, "weights": "random", "seconds": 1.5}


def test_last_block_rows_are_its_consumers_then_the_block_and_the_goal_follows_the_figures():
    rows = hobs_blocks.rows_of(_block(), "cpu:test:avx2", "s")
    assert [(r["part"], r["output"]) for r in rows] == [("consumer", "a/proj"), ("block", "a:out")]
    assert rows[0]["groups"] == "a.hidden 4 of 8, b.heads 2 of 4" and rows[1]["seconds"] == 1.5
    t = hobs_blocks.table(rows, {"s": {"command": "x"}})
    assert t.goals[0].met is True and t.goals[0].detail == "2 of 2" and "s" in t.sources
    worse = hobs_blocks.table(hobs_blocks.rows_of(_block(0.7, 0.5), "cpu:test:avx2", "s"), {})
    assert worse.goals[0].met is False and worse.goals[0].detail == "1 of 2"


def _refit(macs=0.5, every=3.0, default=1.0):
    return {"model": "m", "divisor": 4, "calibration_images": 16, "test_images": 8, "target": 0.5,
            "weights": "random",
            "ways": {"propagate=0": {"logits_relative_error": 0.9, "macs_ratio": macs, "not_refit": [], "seconds": 1},
                     "refit every layer": {"logits_relative_error": every, "macs_ratio": macs, "not_refit": [],
                                           "seconds": 2},
                     "default": {"logits_relative_error": default, "macs_ratio": macs, "not_refit": ["fc", "head"],
                                 "seconds": 1}}}


def test_refit_ways_are_rows_off_target_ones_refused_and_the_goal_compares_default_with_every_layer():
    t = hobs_blocks_refit.table(hobs_blocks_refit.rows_of(_refit(), "cpu:test:avx2", "s"), {})
    assert [r["way"] for r in t.rows] == ["propagate=0", "refit every layer", "default"]
    assert t.rows[2]["not_refit_layers"] == "fc, head" and t.rows[0]["not_refit_layers"] == "none"
    assert t.goals[0].met is True
    assert hobs_blocks_refit.table(hobs_blocks_refit.rows_of(_refit(every=0.5), "cpu:test:avx2", "s"),
                                   {}).goals[0].met is False
    off = hobs_blocks_refit.table(hobs_blocks_refit.rows_of(_refit(macs=0.53), "cpu:test:avx2", "s"), {})
    assert not off.rows and len(off.refused) == 3 and "iso-MACs" in off.refused[0]["refused"]


@pytest.mark.parametrize("study, key", [(hobs_blocks, "consumers"), (hobs_blocks_refit, "ways")])
def test_the_committed_records_convert_with_their_figures_unchanged(study, key):
    with open(os.path.join(RECORDS, f"{study.NAME}.json")) as f:
        raw = json.load(f)
    rows, sources = study.from_legacy(raw)
    assert list(sources) == [f"{study.NAME}@2561caf"] and {r["source"] for r in rows} == set(sources)
    assert len(rows) == sum(len(r[key]) + (key == "consumers") for r in raw)
    if study is hobs_blocks:
        got = [(r["compensated"], r["uncompensated"]) for r in rows if r["part"] == "block"]
        assert got == [(r["block"]["compensated"], r["block"]["uncompensated"]) for r in raw]
    else:
        got = [r["logits_relative_error"] for r in rows]
        assert got == [e["logits_relative_error"] for r in raw for e in r["ways"].values()]


@pytest.mark.parametrize("study, args, match", [(hobs_blocks, (), "no last-block study for 'resnet2'"),
                                                (hobs_blocks_refit, (), "unknown model 'resnet2'")])
def test_an_unknown_model_is_refused_in_one_line_before_any_run(study, args, match):
    with pytest.raises(ValueError, match=match):
        study.measure(["vit_tiny_p4", "resnet2"], *args, device="cpu:test:avx2", source="s")


def test_a_fresh_run_record_rebuilds_the_same_table(tmp_path):
    """What benchmarks/hobs_blocks.py publishes (record in the run_record format, no
    converter needed) is what the catalog rebuilds."""
    from hobs_jax.experiments import studies

    for study, result in ((hobs_blocks, _block()), (hobs_blocks_refit, _refit())):
        rows = study.rows_of(result, "cpu:test:avx2", "s")
        studies.publish(study.NAME, rows, {"s": {"command": "python benchmarks/hobs_blocks.py"}}, study.table,
                        out=str(tmp_path / "a"))
        published = (tmp_path / "a" / f"{study.NAME}.md").read_text()
        studies.render(study, str(tmp_path / "b"), records_dir=str(tmp_path / "a" / "records"))
        assert (tmp_path / "b" / f"{study.NAME}.md").read_text() == published and "python benchmarks" in published
