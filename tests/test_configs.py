"""Every config file loads, validates and documents its command."""

import glob
import importlib.util
import os

import pytest

from hobs_jax.pipeline import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_issue_configs_exist():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    assert {"resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b16", "resnet56_fmnist",
            "resnet20_fmnist", "quickstart"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_validates_and_is_locked(path, variant):
    mod = _load(path)
    c = mod.get_config(variant)
    validate(c)
    assert c.is_locked
    assert f"--config=configs/{os.path.basename(path)}" in mod.__doc__


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_unknown_variant_is_an_error(path):
    with pytest.raises(ValueError, match="unknown config variant 'smol'"):
        _load(path).get_config("smol")


@pytest.mark.parametrize("path", [p for p in CONFIGS if hasattr(_load(p), "VARIANTS")],
                         ids=lambda p: os.path.basename(p))
def test_declared_variants_validate_and_the_cpu_schedule_is_shorter(path):
    """Configs that declare ``VARIANTS`` (the small-image Fashion-MNIST ones: '', 'cpu',
    'smoke') validate in each; a 'cpu' variant trains fewer epochs than the default."""
    mod = _load(path)
    configs = {v: mod.get_config(v or None) for v in mod.VARIANTS}
    for c in configs.values():
        validate(c)
        assert c.is_locked
    if "cpu" in configs:
        assert 0 < configs["cpu"].train.epochs < configs[""].train.epochs
        assert f"configs/{os.path.basename(path)}:cpu" in mod.__doc__  # the CPU schedule is documented
