"""train.ast through the pipeline: the train stage's AST record lands in summary.json
('ast' key) and report.md, with the controller trace PNG in the stage directory."""

import json
import os

import pytest

from hobs_jax.pipeline import base_config, run
from tests._tiny import enable_compile_cache

enable_compile_cache()


@pytest.mark.slow
def test_pipeline_train_stage_with_ast_writes_the_summary_record(tmp_path):
    c = base_config("resnet20")
    c.data.source, c.data.image_size, c.data.eval_batch_size = "synthetic", 16, 64
    c.data.synthetic_examples = 256
    t = c.train
    t.steps, t.epochs, t.batch_size, t.log_every = 24, 0.0, 32, 4
    t.checkpoint.every_steps, t.progress, t.tensorboard = 0, False, False
    t.ast.enabled, t.ast.target_rate, t.ast.warmup_steps = True, 0.5, 2
    t.ast.score = "loss_entropy"
    c.stages = "train"
    c.lock()
    summary = run(c, str(tmp_path))
    a = summary["ast"]["train"]
    assert set(summary["ast"]) == {"train"}
    assert a["rule"] == "ast" and a["score"] == "loss_entropy" and a["target_rate"] == 0.5
    assert a["planned_steps"] == 2 + 11 and a["samples_backpropagated"] == 13 * 32
    assert 0.35 <= a["achieved_rate"] <= 0.65
    assert 0 < a["threshold_min"] <= a["threshold_max"]
    assert (a["kp"], a["ki"], a["ema"]) == (t.ast.kp, t.ast.ki, t.ast.ema)
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["ast"]["train"]["samples_seen"] == a["samples_seen"]
    assert "AST in train: rule ast, target rate 0.5" in open(tmp_path / "report.md").read()
    assert os.path.getsize(a["trace_png"]) > 1000
    assert os.path.dirname(a["trace_png"]) == str(tmp_path / "train")
