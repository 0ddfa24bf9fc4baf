"""train.ast through the pipeline: the train stage's AST record lands in summary.json
('ast' key) and report.md, with the controller trace PNG in the stage directory."""

import json
import os

import pytest

from hobs_jax.pipeline import base_config, run
from tests._tiny import enable_compile_cache

enable_compile_cache()


def _config(section: str, steps: int, warmup_steps: int):
    """ResNet-20 on 256 synthetic 16x16 images, ``section`` ('train' or 'finetune') training
    ``steps`` steps with AST at rate 0.5 after ``warmup_steps``; the train stage 6 steps."""
    c = base_config("resnet20")
    c.data.source, c.data.image_size, c.data.eval_batch_size = "synthetic", 16, 64
    c.data.synthetic_examples = 256
    c.train.steps, c.train.epochs, c.train.batch_size = 6, 0.0, 32
    c.calibrate.num_images, c.calibrate.batch_size = 64, 32
    for s in (c.train, c.finetune):
        s.checkpoint.every_steps, s.progress, s.tensorboard = 0, False, False
    t = c[section]
    t.steps, t.epochs, t.batch_size, t.log_every = steps, 0.0, 32, 4
    t.ast.enabled, t.ast.target_rate, t.ast.warmup_steps = True, 0.5, warmup_steps
    return c


@pytest.mark.slow
def test_pipeline_train_stage_with_ast_writes_the_summary_record(tmp_path):
    c = _config("train", 24, 2)
    t = c.train
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


@pytest.mark.slow
def test_finetune_with_the_reducible_score_takes_its_reference_from_the_dense_network(tmp_path):
    """finetune.ast.score='reducible' with no reference: the finetune stage computes the
    dense (train stage) network's per-example losses once, into the stage directory, and
    selects by the pruned network's loss minus them."""
    import numpy as np

    from hobs_jax import export
    from hobs_jax.pipeline.context import Context
    from hobs_jax.train import ast_reference

    c = _config("finetune", 12, 0)
    c.finetune.ast.score = "reducible"
    c.stages = "train,calibrate,prune,finetune"
    c.lock()
    summary = run(c, str(tmp_path))
    a = summary["ast"]["finetune"]
    path = str(tmp_path / "finetune" / "reference_losses.npy")
    assert a["score"] == "reducible" and a["reference"] == path and a["reference_seconds"] > 0
    assert 0.35 <= a["achieved_rate"] <= 0.65
    dense, v, _ = export.load(str(tmp_path / "train" / "model"))
    want = ast_reference.reference_losses(dense.apply, v, Context(c, None).source, "train")
    np.testing.assert_allclose(ast_reference.load(path, 256), want, rtol=1e-5)
