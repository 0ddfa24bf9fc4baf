"""make reproduce's cheap half: the published tables rebuilt from their run records match
the committed ones byte for byte, README's headline block is rendered from the tables'
JSON (and says "not measured here" for a missing one), and the benchmarks stay thin."""

import json
import os
import subprocess
import sys

import pytest

from hobs_jax.experiments import readme
from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.experiments.tables.catalog import ENTRIES, Run

# Narrative pages under docs/results/: prose that links to generated tables and holds no table of its own.
NARRATIVES = ["aligned_allocation", "bench_quickstart"]
# HISTORY.md: measurement narratives moved out of docstrings (#22 point 5), quoted as measured then.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "results")


# Studies whose Markdown was written by hand before (#22): each is now a ResultTable rebuilt
# from its stored run record without measuring anything.
CONVERTED = ["aligned_allocation_r20", "aligned_allocation_r20b", "aligned_allocation_r56",
             "aligned_allocation_r56_measured", "alignment",
             "ast_controller", "fmnist_baselines", "rspar_latency", "recovery_fmnist_resnet56", "ast_fmnist",
             "ast_fmnist_bn", "ast_fmnist_soft", "ast_fmnist_finetune", "ast_fmnist_finetune_intensity",
             "rspar_fmnist_v2", "rspar_fmnist_lbound0.1", "rspar_fmnist_choice_imitate",
             "rspar_fmnist_choice_noimitate", "block_ell", "anymodel_fmnist", "hobs_blocks", "hobs_blocks_refit",
             "table1_resnet56", "table1_resnet56_lr3e-3", "recovery_fmnist_resnet56_epoch"]


@pytest.mark.parametrize("name", ["table1_fmnist", "ablation_fmnist", "ablation_resnet20", "hobs_cost", "graph",
                                  *CONVERTED])
def test_a_table_rebuilt_from_its_run_record_matches_the_committed_one(tmp_path, name):
    run = Run(out=str(tmp_path), records=os.path.join(RESULTS, "records"), mode="records")
    assert ENTRIES[name].how(run) == "records"
    ENTRIES[name].make(run)
    with open(tmp_path / f"{name}.md") as f, open(os.path.join(RESULTS, f"{name}.md")) as g:
        assert f.read() == g.read()


@pytest.mark.parametrize("name", CONVERTED)
def test_a_converted_study_table_is_a_result_table(name):
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        d = json.load(f)
    assert d["schema"] == "hobs_jax.result_table" and d["name"] == name and d["rows"]
    assert ResultTable.read(os.path.join(RESULTS, f"{name}.json")).to_markdown() == \
        open(os.path.join(RESULTS, f"{name}.md")).read()


def test_every_markdown_table_under_docs_results_is_a_result_table():
    """Every NAME.md under docs/results/ (run folders included) but the narrative pages has
    its NAME.json in the result_table schema (so it was written by ResultTable.write); a
    narrative page holds no table."""
    for name in NARRATIVES:
        with open(os.path.join(RESULTS, name + ".md")) as f:
            assert not [line for line in f if line.startswith("|")], f"{name}.md holds a Markdown table"
    left = []
    for root, dirs, files in os.walk(RESULTS):
        dirs[:] = [d for d in dirs if d != "records"]  # run records: the raw data tables are built from
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            rel = os.path.relpath(os.path.join(root, stem), RESULTS)
            if ext != ".md" or rel in NARRATIVES or rel == "HISTORY":
                continue
            schema = _schema(os.path.join(root, stem + ".json"))
            if schema != "hobs_jax.result_table":
                left.append(rel)
    assert not left, f"Markdown tables not written by ResultTable: {sorted(left)}"


def _schema(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        d = json.load(f)
    return d.get("schema") if isinstance(d, dict) else None


def test_bench_suite_tables_are_rebuilt_from_results_json(tmp_path):
    run = Run(out=str(tmp_path), records=os.path.join(RESULTS, "records"), mode="records")
    assert ENTRIES["bench_runs"].how(run) == "records"
    ENTRIES["bench_runs"].make(run)
    for md in ("jax_vs_torch.md", "bench_quickstart/summary.md", "bench_quickstart/summary_speedup.md",
               "jax_vs_torch/small/summary_ratios.md"):
        assert (tmp_path / md).read_text() == open(os.path.join(RESULTS, md)).read(), md
        assert _schema(str(tmp_path / md).replace(".md", ".json")) == "hobs_jax.result_table"


def test_an_entry_without_its_record_is_missing_not_misread(tmp_path):
    run = Run(out=str(tmp_path), records=str(tmp_path), mode="records")
    assert ENTRIES["table1_fmnist"].how(run) == "missing"
    assert ENTRIES["stability_resnet20"].how(Run(records=str(tmp_path), mode="quick")) == "computed"


def test_a_run_writing_its_tables_elsewhere_writes_its_records_there_too(tmp_path):
    """Measured rows go to ``<out>/records/`` (with the default ``out``, the committed
    records); a rebuild reads them from there first, the committed records otherwise."""
    from hobs_jax.experiments.tables.catalog import Entry

    committed = tmp_path / "committed"
    committed.mkdir()
    measured = Entry("probe", "a computed entry", build=lambda rows, sources, run: rows,
                     compute=lambda run: ([{"x": 1.5}], {}))
    run = Run(out=str(tmp_path / "out"), records=str(committed), mode="full")
    assert measured.make(run) == [{"x": 1.5}]
    own = tmp_path / "out" / "records" / "probe.json"
    assert own.exists() and not os.listdir(committed) and run.record("probe") == str(own)
    rebuilt = Entry("probe", "the same from its record", build=lambda rows, sources, run: rows)
    assert rebuilt.make(Run(out=str(tmp_path / "out"), records=str(committed), mode="records")) == [{"x": 1.5}]
    assert rebuilt.how(Run(out=str(tmp_path / "elsewhere"), records=str(committed), mode="records")) == "missing"


def _graph_table(path, ratio):
    t = ResultTable("graph", "graph discovery", [Column("model", "model"), Column("tp_over_ours", "x")],
                    context=("device",), iso_tolerance=None)
    t.add({"model": "resnet50", "tp_over_ours": ratio, "device": "cpu:test"})
    t.write(str(path / "graph"))


def test_readme_figures_come_from_the_json(tmp_path):
    _graph_table(tmp_path, 2.5)
    block = readme.render(str(tmp_path))
    assert "resnet50 2.5x faster than Torch-Pruning" in block
    assert "| H-OBS cost (2-core CPU) | not measured here |" in block  # no hobs_cost.json there
    text = f"intro\n{readme.BEGIN}\nstale\n{readme.END}\nrest\n"
    out = readme.splice(text, block)
    assert out.startswith("intro\n") and out.endswith("\nrest\n") and "stale" not in out
    _graph_table(tmp_path, 3.0)
    assert "3.0x faster" in readme.splice(out, readme.render(str(tmp_path)))
    with pytest.raises(ValueError, match="marker"):
        readme.splice("no markers", block)


def test_a_table_of_another_schema_version_is_named_not_misread(tmp_path):
    _graph_table(tmp_path, 2.5)
    path = tmp_path / "graph.json"
    d = json.loads(path.read_text())
    d["version"] = 999
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="version"):
        readme.render(str(tmp_path))


def test_readme_block_matches_the_committed_tables():
    out = subprocess.run([sys.executable, "-m", "hobs_jax.experiments.readme", "--check"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_benchmark_script_is_a_thin_cli():
    bench = os.path.join(REPO, "benchmarks")
    for name in sorted(os.listdir(bench)):
        if name.endswith(".py"):
            with open(os.path.join(bench, name)) as f:
                text = f.read()
            assert text.count("\n") < 80, name
            assert "PYTHONPATH" not in text and "from benchmarks" not in text, name


def test_only_selects_catalog_entries_and_refuses_unknown_names_in_one_line(capsys):
    from hobs_jax.experiments import reproduce as rep

    assert rep.select(None) is None
    assert rep.select(" ablation_resnet20,table1_resnet20,ablation_resnet20") == ["ablation_resnet20",
                                                                                  "table1_resnet20"]
    assert rep.select(["workdir_lock"]) == ["workdir_lock"]
    for name in {**rep.QUICK_STUDIES, **rep.CPU_STUDIES}:  # every measured study can be picked by name
        assert name in ENTRIES, name
    with pytest.raises(ValueError, match=r"unknown 'ablation_resnet2'; known: .*ablation_resnet20"):
        rep.select("ablation_resnet2")
    with pytest.raises(ValueError, match="names no entry"):
        rep.select(",")
    assert rep.main(["--only", "sensitivity_resnet20,nope"]) == 2  # before anything runs
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'nope'" in err and "stability_resnet20" in err


def test_only_makes_just_the_named_entries(tmp_path):
    """Quick mode with --only table1_fmnist: that table rebuilt from its record, no other
    table written, no study run, and only the NOT_HERE line that covers it reported."""
    from hobs_jax.experiments.reproduce import NOT_HERE, reproduce

    r = reproduce(True, out=str(tmp_path / "out"), workdir=str(tmp_path / "wd"), readme="", only="table1_fmnist")
    assert r["only"] == ["table1_fmnist"] and r["records"] == ["table1_fmnist"] and not r["computed"]
    assert sorted(os.listdir(tmp_path / "out")) == ["table1_fmnist.json", "table1_fmnist.md", "table1_fmnist.tex"]
    assert list(r["not_here"]) == [k for k in NOT_HERE if k.startswith("oneshot_fmnist")]
