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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "results")


@pytest.mark.parametrize("name", ["table1_fmnist", "ablation_fmnist", "hobs_cost", "graph", "anymodel_fmnist"])
def test_a_table_rebuilt_from_its_run_record_matches_the_committed_one(tmp_path, name):
    run = Run(out=str(tmp_path), records=os.path.join(RESULTS, "records"), mode="records")
    assert ENTRIES[name].how(run) == "records"
    ENTRIES[name].make(run)
    with open(tmp_path / f"{name}.md") as f, open(os.path.join(RESULTS, f"{name}.md")) as g:
        assert f.read() == g.read()


def test_an_entry_without_its_record_is_missing_not_misread(tmp_path):
    run = Run(out=str(tmp_path), records=str(tmp_path), mode="records")
    assert ENTRIES["table1_fmnist"].how(run) == "missing"
    assert ENTRIES["stability_resnet20"].how(Run(records=str(tmp_path), mode="quick")) == "computed"


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
