"""The setup validator catches a misspelled recipe, a missing dataset and a method that
refuses the model; --compare catches two saved models whose MACs differ by 2%. Kept cheap:
recipe and data checks read no network; the method and compare checks use 16x16 networks
of hobs_jax.testing (no training)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from hobs_jax import export
from hobs_jax.experiments import validate as v
from hobs_jax.testing import nets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''"""A test config.

Recipe (checked by python -m hobs_jax.validate):

    train: optimizer=sgd epochs=12 batch_size=128 {lr} warmup_fraction=0.1 early_stopping=off
"""

from hobs_jax.pipeline.config import fmnist_config, fmnist_smoke, with_variant


def get_config(arg=None):
    c = fmnist_config("{model}", epochs=12.0)
    c.prune.method = "{method}"
    c.data.data_dir = "{data_dir}"
    c.benchmark.runtimes = "xla"{extra}
    return with_variant(c, arg, fmnist_smoke)
'''

# A network of one's own at 16x16 on synthetic data: the method checks without a zoo model.
TINY = """
    c.model.import_path = "hobs_jax.testing.nets:{net}"
    c.data.source = "synthetic"
    c.data.image_size = 16"""


def write(tmp_path, lr="lr=0.1", model="resnet20", method="hobs", data_dir="", net=None):
    path = tmp_path / "cfg.py"
    extra = TINY.format(net=net) if net else ""
    path.write_text(CONFIG.format(lr=lr, model=model, method=method, data_dir=data_dir, extra=extra))
    return str(path)


def by_name(checks):
    return {c.name: c for c in checks}


def test_a_config_that_matches_its_recipe_passes(tmp_path):
    c = by_name(v.check_config(write(tmp_path), checks=("recipe", "data")))
    assert all(x.ok for x in c.values()), [x.line() for x in c.values()]
    assert "60,000" in c["data"].detail and "sha256" in c["data"].detail


def test_a_method_that_accepts_the_model_passes(tmp_path):
    (check,) = v.check_config(write(tmp_path, method="hobs", net="DenseNetTiny"), checks=("method",))
    assert check.ok and "hobs is registered and accepts hobs_jax.testing.nets:DenseNetTiny" in check.detail


@pytest.mark.parametrize("lr, why", [("lr=0.01", "train.lr: recipe 0.01, config 0.1"),
                                     ("lrate=0.1", "train.lrate: not a key of the train section")])
def test_a_misspelled_recipe_value_fails(tmp_path, lr, why):
    (check,) = v.check_config(write(tmp_path, lr=lr), checks=("recipe",))
    assert not check.ok and why in check.detail


def test_a_missing_dataset_fails(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    (check,) = v.check_config(write(tmp_path, data_dir=str(empty)), checks=("data",))
    assert not check.ok and "missing" in check.detail and "train-images-idx3-ubyte.gz" in check.detail


def test_a_method_that_refuses_the_model_fails(tmp_path):
    # UDFC's closed-form ReLU moments need BN then ReLU; ConvNeXtTiny has LayerNorm and GELU
    (check,) = v.check_config(write(tmp_path, method="udfc", net="ConvNeXtTiny"), checks=("method",))
    assert not check.ok and "udfc" in check.detail and "not ReLU alone" in check.detail


def test_the_cli_prints_one_line_per_check_and_exits_non_zero(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "hobs_jax.validate", f"--config={write(tmp_path, lr='lr=0.05')}",
                          "--checks=variants,recipe"], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert out.returncode == 1 and len(lines) == 2
    assert lines[0].startswith("PASS  variants") and lines[1].startswith("FAIL  recipe")


def _save(path, **kwargs):
    net = nets.DenseNetTiny(layers=1, **kwargs)
    variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)
    return export.save(str(path), net, variables, input_shape=(1, 16, 16, 1))


def test_compare_refuses_models_whose_macs_differ_by_2_percent(tmp_path):
    # one stem channel more, one growth channel fewer: 2.06% of the MACs
    a, b = _save(tmp_path / "a", stem=16, growth=9), _save(tmp_path / "b", stem=17, growth=8)
    checks, table = v.compare_models(a, b, input_shape=(16, 16, 1))
    c = by_name(checks)
    assert not c["total MACs"].ok and "(2.06%" in c["total MACs"].detail, c["total MACs"].detail
    assert not c["per-layer MACs and params"].ok and "Conv_0" in c["per-layer MACs and params"].detail
    assert "| Conv_1 |" in table and "**off**" in table
    same, _ = v.compare_models(a, a)  # the saved input shape (16x16x1) by default
    assert all(x.ok for x in same)
