"""Export of pruned zoo models: orbax checkpoint (save / hobs_jax.load), PyTorch, ONNX."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import hobs_jax
from hobs_jax import export, models
from hobs_jax import graph as G
from tests._tiny import subprocess_env
from tests._zoo_vars import random_variables, zoo_model


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def pruned_r20():
    model, shape = zoo_model("resnet20")
    v = random_variables(model, shape, seed=0)
    g = G.build_graph(model, v)
    plan = G.random_plan(g, seed=1)
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return pm, pv, plan, x, np.asarray(jax.jit(pm.apply)(pv, x))


def test_checkpoint_round_trip(tmp_path, pruned_r20):
    pm, pv, plan, x, y = pruned_r20
    path = export.save(tmp_path / "ckpt", pm, pv, plan)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
    model, variables, meta = hobs_jax.load(path)
    assert model == pm and meta["plan"] == plan and meta["model"] == "resnet20"
    flat_a = jax.tree_util.tree_flatten_with_path(pv)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    assert len(flat_a) == len(flat_b)
    for p, leaf in flat_a:
        assert np.array_equal(np.asarray(leaf), flat_b[p]) and flat_b[p].dtype == np.asarray(leaf).dtype, p
    assert np.array_equal(np.asarray(jax.jit(model.apply)(variables, x)), y)


def test_to_torch_and_onnx_agree_with_flax(tmp_path, pruned_r20):
    import onnxruntime as ort
    import torch

    pm, pv, _, x, y = pruned_r20
    module, sd = export.to_torch(pm, pv)
    assert set(sd) == set(module.state_dict()) and module.conv1.out_channels == pm.widths["conv1"]
    with torch.no_grad():
        yt = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert _rel(yt, y) <= 1e-5
    path = export.to_onnx(pm, pv, tmp_path / "m.onnx", input_shape=x.shape)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    yo = sess.run(["logits"], {"input": x.transpose(0, 3, 1, 2)})[0]
    assert yo.shape == y.shape and _rel(yo, y) <= 1e-5


def test_pruned_vit_exports_with_its_head_layout(tmp_path):
    """Heads and q/k dims pruned: torch gets HeadAttention with the original softmax
    temperature, and the checkpoint keeps scale_dim."""
    import torch

    narrow, shape = zoo_model("vit_b_16", narrow=True)
    model = models.build("vit_b_16", widths=narrow.widths, num_classes=7, scale_dim=5)  # not the default 64
    v = random_variables(model, shape, seed=2)
    g = G.build_graph(model, v)
    plan = G.random_plan(g, seed=3, select=lambda grp: grp.kind in ("heads", "head_dim"))
    pm, pv = G.apply_plan(model, v, plan, graph=g)
    assert pm.scale_dim == model.scale_dim == 5 and pm.widths["encoder_layer_0.qk_dim"] < 5
    x = np.random.default_rng(1).normal(size=(1,) + shape[1:]).astype(np.float32)
    y = np.asarray(jax.jit(pm.apply)(pv, x))
    module, _ = export.to_torch(pm, pv)
    with torch.no_grad():
        yt = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert type(module.encoder.layers[0].self_attention).__name__ == "HeadAttention"
    assert _rel(yt, y) <= 1e-5
    m2, v2, meta = hobs_jax.load(export.save(tmp_path / "vit", pm, pv, plan))
    assert meta["scale_dim"] == 5 and m2 == pm
    assert np.array_equal(np.asarray(jax.jit(m2.apply)(v2, x)), y)


def test_interrupted_save_leaves_nothing_loadable(tmp_path, pruned_r20, monkeypatch):
    pm, pv, plan, _, _ = pruned_r20
    target = tmp_path / "ckpt"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.json, "dump", boom)
    with pytest.raises(KeyboardInterrupt):
        export.save(target, pm, pv, plan)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"no hobs_jax checkpoint at .*ckpt \(not a directory\)"):
        hobs_jax.load(target)


def test_bad_or_corrupt_checkpoints_give_one_line_errors(tmp_path, pruned_r20):
    pm, pv, plan, _, _ = pruned_r20
    path = export.save(tmp_path / "ckpt", pm, pv, plan)
    with pytest.raises(ValueError, match=r"exists; pass overwrite=True"):
        export.save(path, pm, pv)
    export.save(path, pm, pv, overwrite=True)
    assert hobs_jax.load(path)[2]["plan"] is None

    os.makedirs(tmp_path / "empty")
    cases = [(tmp_path / "empty", r"not a complete hobs_jax checkpoint \(no meta.json\)")]
    bad_meta = tmp_path / "bad_meta"
    os.makedirs(bad_meta)
    (bad_meta / "meta.json").write_text("{truncated")
    cases.append((bad_meta, r"corrupt checkpoint .*meta.json unreadable"))

    wrong_widths = tmp_path / "wrong_widths"
    export.save(wrong_widths, pm, pv)
    meta = json.loads((wrong_widths / "meta.json").read_text())
    meta["widths"]["conv1"] += 1
    (wrong_widths / "meta.json").write_text(json.dumps(meta))
    cases.append((wrong_widths, r"corrupt checkpoint .*: .* has shape .*, the model at the saved widths expects"))

    broken = tmp_path / "broken"
    export.save(broken, pm, pv)
    for root, _, files in os.walk(broken / "variables"):
        for f in files:
            if f != "_CHECKPOINT_METADATA":
                os.remove(os.path.join(root, f))
    cases.append((broken, r"corrupt checkpoint .*: variables do not restore"))
    for p, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            hobs_jax.load(p)
        assert "\n" not in str(e.value)


def test_core_library_does_not_import_torch():
    code = ("import sys, hobs_jax, hobs_jax.graph, hobs_jax.export; "
            "assert 'torch' not in sys.modules and 'parity' not in sys.modules, sorted(sys.modules)[:5]; "
            "print('clean')")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr[-500:]
