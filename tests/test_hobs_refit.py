"""H-OBS's sequential refit (``propagate``): the one-pass implementation
(:mod:`hobs_jax.obs.refit`) against the definition computed the slow, obvious way
(one full forward of the pruned network per layer, explicit im2col rows, float64
``A = P^T P``, ``B = P^T D``, ``W' = (A_KK + lambda)^{-1} B_K W``), and the cross
statistics against explicit rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from hobs_jax import models
from hobs_jax.obs import refit_sequential
from hobs_jax.stats.cross import cross_stats
from hobs_jax.stats.layers import capture_inputs, capture_outputs, kernel_matrix, layer_rows, trace_layers

SHAPE = (1, 16, 16, 1)


@pytest.fixture(scope="module")
def net():
    """A 3-stage CIFAR ResNet-20 at widths 4/8/16 (stride-1 3x3, stride-2 3x3 and 1x1
    projection convs, a biased Dense head), random weights, 64 random images."""
    widths = {k: max(2, v // 4) for k, v in models.default_widths("resnet20").items()}
    model = models.build("resnet20", widths=widths, num_classes=5, in_channels=1)
    v = jax.device_get(models.random_variables(model, SHAPE, seed=3))
    x = np.random.default_rng(1).normal(size=(64,) + SHAPE[1:]).astype(np.float32)
    return model, v, x, trace_layers(model, v, SHAPE)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _pruned(v, infos, seed=0):
    """Full-size variables with a third of the input channels of half the layers zeroed
    (what H-OBS's compensation leaves), and those rows per layer path."""
    rng = np.random.default_rng(seed)
    out = jax.tree.map(np.array, v)
    removed = {}
    for i, (p, info) in enumerate(infos.items()):
        if i % 2 or info.path == ("conv1",):
            continue
        cin = info.kernel_shape[-2]
        chans = np.sort(rng.choice(cin, max(1, cin // 3), replace=False))
        k = _get(out["params"], p)["kernel"]
        k[..., chans, :] = 0.0
        taps = int(np.prod(info.kernel_shape[:-2]))
        removed[p] = (np.arange(taps)[:, None] * cin + chans[None, :]).reshape(-1)  # (tap, channel) rows
    return out, removed


def reference_refit(model, dense, pruned, layers, removed, x, damp):
    """The sequential refit as defined: per layer, in call order, one forward of the
    pruned network so far for P and of the dense one for D, float64 everywhere."""
    out = jax.tree.map(np.array, pruned)
    for info in sorted(layers, key=lambda i: i.order):
        p = info.path
        rows_p = np.asarray(layer_rows(info, capture_inputs(model, out, jnp.asarray(x), [p])[p]), np.float64)
        rows_d = np.asarray(layer_rows(info, capture_inputs(model, dense, jnp.asarray(x), [p])[p]), np.float64)
        w = kernel_matrix(info, _get(dense["params"], p)["kernel"]).astype(np.float64)
        if info.use_bias:
            rows_p = np.concatenate([rows_p, np.ones((len(rows_p), 1))], 1)
            rows_d = np.concatenate([rows_d, np.ones((len(rows_d), 1))], 1)
            w = np.concatenate([w, np.asarray(_get(dense["params"], p)["bias"], np.float64).reshape(1, -1)], 0)
        rem = removed.get(p, np.zeros(0, np.int64))
        if not len(rem) and np.abs(rows_p - rows_d).max() <= 1e-6 * np.abs(rows_d).max():
            continue
        keep = np.setdiff1d(np.arange(rows_p.shape[1]), rem)
        a = rows_p[:, keep].T @ rows_p[:, keep]
        a[np.diag_indices_from(a)] += damp * np.mean(np.diag(a))
        new = np.zeros_like(w)
        new[keep] = scipy.linalg.solve(a, rows_p[:, keep].T @ rows_d @ w, assume_a="pos")
        _get(out["params"], p)["kernel"] = new[:info.d_in].reshape(info.kernel_shape).astype(np.float32)
        if info.use_bias:
            bias_shape = np.shape(_get(dense["params"], p)["bias"])
            _get(out["params"], p)["bias"] = new[info.d_in].reshape(bias_shape).astype(np.float32)
    return out


@pytest.mark.parametrize("sweeps", [1, 2])
def test_one_pass_refit_equals_the_layer_by_layer_definition(net, sweeps):
    model, v, x, infos = net
    pruned, removed = _pruned(v, infos)
    layers = [i for i in infos.values() if i.kind in ("conv", "dense")]
    got = refit_sequential(model, v, pruned, layers, removed, x, sweeps=sweeps, damp=1e-3, batch_size=10)
    ref = pruned
    for _ in range(sweeps):
        ref = reference_refit(model, v, ref, layers, removed, x, 1e-3)
    changed = {"got": set(), "ref": set()}
    for info in layers:
        g = np.asarray(_get(got["params"], info.path)["kernel"])
        r = np.asarray(_get(ref["params"], info.path)["kernel"])
        np.testing.assert_allclose(g, r, atol=2e-4 * np.abs(r).max(), err_msg=info.name)
        before = np.asarray(_get(pruned["params"], info.path)["kernel"])
        for k, t in (("got", g), ("ref", r)):
            if not np.array_equal(t, before):
                changed[k].add(info.name)
        if info.path in removed:  # removed rows stay zero
            assert not np.any(kernel_matrix(info, g)[removed[info.path]])
    # The head's bias carries the float32 rounding of every layer before it: measured
    # 1.5e-4 / 2.3e-4 of its largest entry with the row-shift products concatenated / one
    # tap row at a time (the float64 reference is the same); a wrong solve is off by O(1).
    np.testing.assert_allclose(got["params"]["fc"]["bias"], ref["params"]["fc"]["bias"],
                               atol=5e-4 * np.abs(ref["params"]["fc"]["bias"]).max())
    # left alone: the stem conv and the first block's conv1 (dense input, nothing removed)
    assert changed["got"] == changed["ref"] == {i.name for i in layers} - {"conv1", "layer1/0/conv1"}
    # and the refit did something: the pruned network's logits move towards the dense ones
    dense = np.asarray(model.apply(v, jnp.asarray(x), train=False))
    err = [np.mean((np.asarray(model.apply(t, jnp.asarray(x), train=False)) - dense) ** 2) for t in (pruned, got)]
    assert err[1] < 0.5 * err[0], err


def test_cross_stats_match_explicit_rows(net):
    """A = P^T P, R = P^T Y in the kernel's row order, bias sums included, for a stride-1
    3x3 conv (row-shift Gram), a stride-2 3x3 conv, a 1x1 projection and the Dense head."""
    model, v, x, infos = net
    other = jax.tree.map(lambda a: np.asarray(a) * 0.9, v)  # any second network of the same shape
    ins = capture_inputs(model, other, jnp.asarray(x))
    _, outs = capture_outputs(model, v, jnp.asarray(x))
    paths = [("layer1", "0", "conv1"), ("layer2", "0", "conv1"), ("fc",)]
    paths += [p for p in infos if p[0] == "layer2" and infos[p].kernel_shape[:2] == (1, 1)][:1]
    assert len(paths) == 4
    for path in paths:
        info = infos[path]
        st = cross_stats(info, ins[path], outs[path])
        p = np.asarray(layer_rows(info, ins[path]), np.float64)
        y = np.asarray(outs[path], np.float64).reshape(len(p), -1)
        assert st.count == len(p)
        scale = np.abs(p).max() ** 2 * len(p)
        np.testing.assert_allclose(st.a, p.T @ p, atol=1e-6 * scale, err_msg=info.name)
        np.testing.assert_allclose(st.r, p.T @ y, atol=1e-6 * np.abs(p).max() * np.abs(y).max() * len(p),
                                   err_msg=info.name)
        assert (st.psum is None) == (not info.use_bias)
        if info.use_bias:
            np.testing.assert_allclose(st.psum, p.sum(0), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(st.ysum, y.sum(0), rtol=1e-5, atol=1e-4)
            a, r = st.augmented()
            assert a.shape == (info.d_in + 1,) * 2 and r.shape == (info.d_in + 1, info.d_out)
            assert a[-1, -1] == len(p)


def test_cross_stats_reduce_a_in_calibration_batches_with_its_executables(net):
    """A = P^T P taken 24 images at a time (the last batch padded and masked) equals the
    explicit rows, and after a calibration with that batch size the refit's Gram compiles
    nothing new: it runs calibration's executables (a first H-OBS call saved ~5 s)."""
    from hobs_jax.stats import hessian

    model, v, x, infos = net
    path = ("layer1", "0", "conv2")
    info = infos[path]
    ins = capture_inputs(model, v, jnp.asarray(x), [path])
    _, outs = capture_outputs(model, v, jnp.asarray(x))
    jax.clear_caches()
    hessian.collect_hessians(model, v, x[:24], paths=[path], batch_size=24, progress=False, infos=infos)
    compiled = hessian.compiled_reductions()
    st = cross_stats(info, ins[path], outs[path], batch_size=24)  # 64 images: 24 + 24 + 16 padded
    assert hessian.compiled_reductions() == compiled
    p = np.asarray(layer_rows(info, ins[path]), np.float64)
    assert st.count == len(p)
    np.testing.assert_allclose(st.a, p.T @ p, atol=1e-6 * np.abs(p).max() ** 2 * len(p))


def test_cross_stats_bad_input(net):
    model, v, x, infos = net
    info = infos[("layer1", "0", "conv1")]
    xin = capture_inputs(model, v, jnp.asarray(x), [info.path])[info.path]
    with pytest.raises(ValueError, match="64 pruned inputs but 3 dense outputs"):
        cross_stats(info, xin, jnp.zeros((3, 16, 16, info.d_out)))
    with pytest.raises(ValueError, match="non-finite cross statistics"):
        cross_stats(info, xin.at[0, 0, 0, 0].set(jnp.inf), jnp.zeros(xin.shape[:3] + (info.d_out,)))


def test_refit_of_dense_general_layers_keeps_bias_shapes():
    """ViT-style DenseGeneral layers (features [heads, dim], bias of that shape) are refit
    like the definition says and keep their parameter shapes."""
    import flax.linen as nn

    class Heads(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Dense(6, name="d0")(x.reshape(x.shape[0], -1)))
            x = nn.relu(nn.DenseGeneral((2, 3), name="qkv")(x))
            return nn.DenseGeneral(4, axis=(-2, -1), name="out")(x)

    model = Heads()
    shape = (1, 4, 4, 1)
    v = jax.device_get(models.random_variables(model, shape, seed=1))
    x = np.random.default_rng(2).normal(size=(40,) + shape[1:]).astype(np.float32)
    infos = trace_layers(model, v, shape)
    pruned = jax.tree.map(np.array, v)
    pruned["params"]["qkv"]["kernel"][[1, 4]] = 0.0
    removed = {("qkv",): np.array([1, 4])}
    got = refit_sequential(model, v, pruned, list(infos.values()), removed, x, damp=1e-3)
    ref = reference_refit(model, v, pruned, list(infos.values()), removed, x, 1e-3)
    for name in ("qkv", "out"):
        for leaf in ("kernel", "bias"):
            g, r = np.asarray(got["params"][name][leaf]), np.asarray(ref["params"][name][leaf])
            assert g.shape == r.shape == np.shape(v["params"][name][leaf])
            np.testing.assert_allclose(g, r, atol=1e-4 * np.abs(r).max(), err_msg=f"{name}/{leaf}")
    assert not np.array_equal(got["params"]["out"]["kernel"], v["params"]["out"]["kernel"])
