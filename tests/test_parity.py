"""Parity with torchvision: every zoo model, both dtypes, both conversion directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hobs_jax import models
from parity import __main__ as cli
from parity.check import ALL_MODELS, ROUNDING_FACTOR, ParityResult, StageDiff, check_model, format_result
from parity.convert import flax_to_state_dict, flax_to_torch, load_torch_file, torch_to_flax
from parity.torch_models import build_torch


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_parity_standard(name, dtype):
    # BN statistics from 16 real training images (the CLI's default is 32): the same
    # trained-network scale at half the cost of the torch calibration, most of a check's time.
    result = check_model(name, dtype, calib=16)
    assert result.passed, format_result(result)
    assert [s.stage for s in result.stages][-1] == "logits"


def test_float32_stage_over_1e5_passes_only_within_torch_rounding_floor():
    # 4e-5 apart from torch float32, which is itself 3.6e-5 from float64: Flax at 2.1e-5
    # from float64 is rounding (MobileNetV2's last stage on an AVX-512 CPU); just over 2x it is not.
    near = StageDiff("features.18", 4e-4, 10.0, torch_f32_rel=3.6e-5, flax_f32_rel=2.1e-5)
    far = StageDiff("features.18", 4e-4, 10.0, torch_f32_rel=3.6e-5,
                    flax_f32_rel=ROUNDING_FACTOR * 3.6e-5 * 1.01)
    assert near.verdict("float32") == "floor" and far.verdict("float32") == "NO"
    assert StageDiff("s", 5e-5, 10.0, 1e-7, 1e-7).verdict("float32") == "yes"
    assert near.verdict("float64") == "NO"  # float64 has no floor clause
    assert ParityResult("m", "float32", (near,), True).passed
    assert not ParityResult("m", "float32", (near, far), True).passed
    assert not ParityResult("m", "float32", (near,), False).passed  # logits allclose still binds
    # ... unless the logits are within the same floor (EfficientNet-B0 on a CI machine)
    assert ParityResult("m", "float32", (near,), False, logits_floor=True).passed
    assert not ParityResult("m", "float32", (near,), False, logits_floor=False).passed
    assert "(floor): yes" in format_result(ParityResult("m", "float32", (near,), False, logits_floor=True))
    assert "floor" in format_result(ParityResult("m", "float32", (near,), True))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torch_flax_torch_round_trip_is_bit_exact(name):
    ref = build_torch(name, in_channels=_ic(name))
    _, variables = torch_to_flax(name, ref)
    back = flax_to_state_dict(name, variables)
    orig = ref.state_dict()
    assert set(back) == set(orig)
    for key, t in orig.items():
        if key.endswith("num_batches_tracked"):
            assert int(back[key]) == 0  # not represented in Flax; exported as 0
            continue
        assert back[key].dtype == t.dtype and torch.equal(back[key], t), key


def _ic(name):
    """Input channels the parity tests use: 1 for the CIFAR ResNets and the small-image forms."""
    return 1 if name in ("resnet20", "resnet56") else models.get_entry(name).in_channels


def _random_widths(name, seed):
    rng = np.random.RandomState(seed)
    return {k: max(1, int(v * rng.uniform(0.2, 1.0))) for k, v in models.default_widths(name).items()}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_non_default_widths_export_to_torch_and_back(name):
    """A model at arbitrary widths (how pruned models export) runs identically in torch
    (float64, to 1e-12 relative) and converts back bit-exactly."""
    ic = _ic(name)
    widths = _random_widths(name, 0)
    model = models.build(name, widths=widths, num_classes=5, in_channels=ic)
    size = 224 if name == "vit_b_16" else 28 if models.get_entry(name).input_size == 28 else 64
    # float64 leaves with non-trivial BN statistics, biases and heads.
    v = models.random_variables(model, (2, size, size, ic), seed=2, dtype=np.float64)
    x = np.random.RandomState(1).randn(2, size, size, ic)
    with jax.enable_x64(True):
        y = np.asarray(jax.jit(model.apply)(v, jnp.asarray(x)))
    tm = flax_to_torch(name, v)
    with torch.no_grad():
        yt = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.abs(y - yt).max() <= 1e-12 * np.abs(yt).max()
    _, back = torch_to_flax(name, tm)
    flat_a = jax.tree_util.tree_flatten_with_path(v)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(back)[0])
    for path, leaf in flat_a:
        assert np.array_equal(np.asarray(leaf), flat_b[path]), path


def _sd():
    return build_torch("resnet20", in_channels=1).state_dict()


def test_missing_key_is_named():
    sd = _sd()
    del sd["layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing key\(s\) 'layer2.0.conv1.weight'"):
        torch_to_flax("resnet20", sd)


def test_unexpected_key_is_named():
    sd = _sd()
    sd["layer9.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) 'layer9.weight'"):
        torch_to_flax("resnet20", sd)


def test_mis_shaped_key_is_named():
    sd = _sd()
    sd["layer1.0.bn1.weight"] = torch.zeros(15)
    with pytest.raises(ValueError, match="layer1.0"):
        torch_to_flax("resnet20", sd)


def test_wrong_rank_conv_weight_is_named():
    sd = _sd()
    sd["layer1.0.conv1.weight"] = torch.zeros(16, 16)
    with pytest.raises(ValueError, match=r"layer1.0.conv1.weight: expected a rank-4 conv weight"):
        torch_to_flax("resnet20", sd)


def test_every_bad_key_is_named_in_one_line():
    sd = _sd()
    del sd["layer2.0.conv1.weight"], sd["fc.bias"]
    sd["layer9.weight"] = torch.zeros(3)
    sd["layer1.0.bn1.weight"] = torch.zeros(15)
    with pytest.raises(ValueError) as e:
        torch_to_flax("resnet20", sd)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("resnet20: torch state_dict does not match: ")
    assert "missing key(s) 'fc.bias', 'layer2.0.conv1.weight'; unexpected key(s) 'layer9.weight'" in msg
    sd = _sd()
    sd["layer1.0.bn1.weight"] = torch.zeros(15)
    sd["layer3.1.conv2.weight"] = torch.zeros(64, 63, 3, 3)
    with pytest.raises(ValueError) as e:
        torch_to_flax("resnet20", sd)
    assert "'layer1.0.bn1.weight' converts to shape (15,), the model expects (16,)" in str(e.value)
    assert "'layer3.1.conv2.weight' converts to shape (3, 3, 63, 64), the model expects (3, 3, 64, 64)" in str(e.value)


def test_renaming_rules_convert_other_naming_schemes():
    """A CIFAR ResNet saved with ``shortcut.0/1`` projections and a ``linear`` head, under
    DataParallel's ``module.`` prefix, converts with two presets; the result equals the
    torchvision-named conversion."""
    ref = build_torch("resnet20", in_channels=1)
    sd = ref.state_dict()
    theirs = {"module." + k.replace(".downsample.", ".shortcut.").replace("fc.", "linear.", 1)
              if k.startswith("fc.") else "module." + k.replace(".downsample.", ".shortcut."): v
              for k, v in sd.items()}
    assert any(".shortcut.0." in k for k in theirs) and "module.linear.weight" in theirs
    with pytest.raises(ValueError, match=r"missing key\(s\) 'bn1.bias'"):
        torch_to_flax("resnet20", theirs)
    _, v = torch_to_flax("resnet20", theirs, rename=["dataparallel", "cifar_shortcut"])
    _, want = torch_to_flax("resnet20", sd)
    same = jax.tree.map(np.array_equal, v, want)
    assert all(jax.tree.leaves(same))
    _, v2 = torch_to_flax("resnet20", theirs, rename=[(r"^module\.", ""), (r"shortcut", "downsample"),
                                                      (r"^linear", "fc")])
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, v2, want)))
    msg = r"renaming maps both 'module\.\w+\.weight' and 'module\.\w+\.weight' to 'fc.weight'"
    with pytest.raises(ValueError, match=msg):
        torch_to_flax("resnet20", dict(theirs, **{"module.fc.weight": sd["fc.weight"]}),
                      rename=["dataparallel", "cifar_shortcut"])
    with pytest.raises(ValueError, match=r"unknown renaming preset 'ddp'"):
        torch_to_flax("resnet20", theirs, rename="ddp")


def test_torch_files_load_with_weights_only(tmp_path, capfd):
    good = tmp_path / "good.pt"
    torch.save(_sd(), good)
    model, v = torch_to_flax("resnet20", load_torch_file(good))
    assert models.infer_widths("resnet20", v)[2] == 1

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "bad.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(ValueError, match=r"holds a pickled object that needs print to load, not "
                                         r"a plain state_dict; weights-only loading refuses it"):
        load_torch_file(bad)
    assert "pickled code ran" not in capfd.readouterr().out


def test_cli_reports_pass_and_exit_code(capsys):
    assert cli.main(["--model", "resnet20"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "PASS 1/1 models"


def test_cli_reports_fail_and_exit_code(capsys, monkeypatch):
    bad = ParityResult("resnet20", "float32", (StageDiff("logits", 1.0, 1.0),), False)
    monkeypatch.setattr(cli, "check_model", lambda *a, **k: bad)
    assert cli.main(["--model", "resnet20"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "FAIL 1/1 models (resnet20)"


def test_cli_rejects_unknown_model():
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "resnet5"])
    assert e.value.code == 2
