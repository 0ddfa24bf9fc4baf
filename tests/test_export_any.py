"""Saving, reloading and exporting networks outside the zoo (linen and NNX): by import path
and constructor arguments, refused in one line when that cannot rebuild them; ONNX for
any network through the jaxpr translator, checked with onnxruntime against Flax."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hobs_jax
from hobs_jax import export
from hobs_jax import graph as G
from hobs_jax.testing.init import random_linen, random_nnx
from hobs_jax.testing.nets import ConvNeXtTiny, ShuffleNetTiny, ViTTiny
from hobs_jax.testing.nnx_nets import ViTNNX

SHAPE = (1, 16, 16, 1)


def _pruned(p):
    g = G.graph_of(p)
    return G.apply_plan(p, G.random_plan(g, 0, min_ratio=0.4, max_ratio=0.8), graph=g)


def test_linen_round_trip_at_pruned_widths(tmp_path):
    m = ConvNeXtTiny()
    small = _pruned(G.prunable(m, random_linen(m, SHAPE), SHAPE))
    path = export.save(tmp_path / "c", small)
    model, variables, meta = hobs_jax.load(path)
    assert meta["kind"] == "linen" and meta["spec"]["import_path"] == "hobs_jax.testing.nets:ConvNeXtTiny"
    assert meta["spec"]["kwargs"] == {"num_classes": 10, "dim": 16, "blocks": 1}
    x = np.random.default_rng(0).normal(size=(2,) + SHAPE[1:]).astype(np.float32)
    np.testing.assert_array_equal(model.apply(variables, x), small.module.apply(small.variables, x))


def test_nnx_round_trip_needs_its_constructor_arguments(tmp_path):
    """Widths come back from the arrays; structure (depth) from the constructor's
    arguments, which an NNX module does not remember."""
    net = random_nnx(ViTNNX, dim=24, mlp=48, depth=2)
    small = _pruned(G.prunable(net, input_shape=SHAPE))
    with pytest.raises(ValueError, match=r"variables do not match hobs_jax.testing.nnx_nets:ViTNNX built from its "
                                         r"defaults \(pass init_kwargs=\): unexpected params/blocks/1/"):
        export.save(tmp_path / "v", small)
    assert not os.path.exists(tmp_path / "v")
    path = export.save(tmp_path / "v", small, init_kwargs={"depth": 2})
    back = export.load_prunable(path).to_nnx()
    assert isinstance(back, ViTNNX) and back.blocks[0].fc1.out_features == small.to_nnx().blocks[0].fc1.out_features
    x = np.random.default_rng(1).normal(size=(2,) + SHAPE[1:]).astype(np.float32)
    back.eval()
    np.testing.assert_allclose(back(x), small.module.apply(small.variables, x), rtol=1e-6, atol=1e-6)


class Local(nn.Module):  # importable, but its field is a function
    act: object = jax.nn.relu

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(self.act(nn.Dense(4)(x)))


def test_what_cannot_be_saved_by_import_path_is_refused_in_one_line(tmp_path):
    m = Local()
    v = random_linen(m, (1, 5))
    with pytest.raises(ValueError, match=r"Local: argument 'act' holds a \w+, which cannot be saved as JSON"):
        export.save(tmp_path / "a", m, v, input_shape=(1, 5))

    class Inner(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    mi = Inner()
    with pytest.raises(ValueError, match=r"test_export_any.test_what_cannot_be_saved_by_import_path_is_refused_in_one_"
                                         r"line.<locals>.Inner is defined inside a function"):
        export.save(tmp_path / "b", mi, random_linen(mi, (1, 5)), input_shape=(1, 5))
    with pytest.raises(ValueError, match=r"to_torch converts zoo models .* hobs_jax.testing.nets.ShuffleNetTiny is not "
                                         r"one: use export.to_onnx"):
        s = ShuffleNetTiny()
        export.to_torch(G.prunable(s, random_linen(s, SHAPE), SHAPE), None)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("which", ["vit", "vit_nnx", "shufflenet"])
def test_onnx_of_any_network_agrees_with_flax(tmp_path, which):
    import onnxruntime as ort

    if which == "vit_nnx":
        p = G.prunable(random_nnx(ViTNNX), input_shape=SHAPE)
    else:
        m = ViTTiny() if which == "vit" else ShuffleNetTiny()
        p = G.prunable(m, random_linen(m, SHAPE), SHAPE)
    p = _pruned(p)
    path = export.to_onnx(p, None, tmp_path / "m.onnx", input_shape=(3,) + SHAPE[1:])
    x = np.random.default_rng(2).normal(size=(3,) + SHAPE[1:]).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    ref = np.asarray(p.module.apply(p.variables, jnp.asarray(x)))
    assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_onnx_refuses_an_unsupported_primitive_in_one_line(tmp_path):
    class Sorter(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(jnp.sort(nn.Dense(4)(x), axis=-1))

    m = Sorter()
    with pytest.raises(ValueError, match=r"ONNX export: unsupported primitive 'sort' at "):
        export.to_onnx((m, random_linen(m, (1, 5))), None, tmp_path / "s.onnx", input_shape=(1, 5))
    assert not os.path.exists(tmp_path / "s.onnx")
