"""Layer Hessian statistics (hobs_jax.stats.hessian / layers): im2col order, streaming,
float64, bias rows, depthwise, dampening, dead inputs and bad input."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax.stats import collect_hessians, dampen, trace_layers
from hobs_jax.stats.layers import LayerInfo, capture_inputs, capture_outputs, conv_rows, kernel_matrix, layer_rows
from tests._tiny import init_tiny


class Net(nn.Module):
    """Every layer kind the statistics handle: 3x3 s1, 3x3 s2 with asymmetric dilation
    padding, 1x1 s2 (a downsample), depthwise 3x3, Dense with bias, DenseGeneral."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="c1")(x))
        b = nn.Conv(5, (3, 3), strides=2, padding=((1, 0), (2, 1)), kernel_dilation=2, use_bias=False,
                    name="c2")(a)
        d = nn.Conv(5, (1, 1), strides=2, padding=((0, 0), (0, 0)), use_bias=False, name="down")(a)
        y = nn.relu(b + d[:, :b.shape[1], :b.shape[2]])
        y = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=5, use_bias=False, name="dw")(y)
        y = jnp.mean(y, axis=(1, 2))
        y = nn.relu(nn.Dense(8, name="fc1")(y)).reshape(-1, 2, 4)
        return nn.DenseGeneral(3, axis=(-2, -1), name="out")(y)


SHAPE = (1, 9, 8, 3)


@pytest.fixture(scope="module")
def net():
    model = Net()
    v = init_tiny(model, SHAPE[1:], seed=1)
    x = np.random.default_rng(0).normal(size=(7,) + SHAPE[1:]).astype(np.float32)
    return model, v, x


def numpy_im2col(x, k, stride, pads, dil):
    """Reference rows [n, kh*kw*C] in (tap row, tap col, channel) order."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = k
    ho = (xp.shape[1] - (kh - 1) * dil[0] - 1) // stride[0] + 1
    wo = (xp.shape[2] - (kw - 1) * dil[1] - 1) // stride[1] + 1
    taps = [xp[:, i * dil[0]:i * dil[0] + (ho - 1) * stride[0] + 1:stride[0],
               j * dil[1]:j * dil[1] + (wo - 1) * stride[1] + 1:stride[1], :]
            for i in range(kh) for j in range(kw)]
    return np.stack(taps, axis=3).reshape(-1, kh * kw * x.shape[-1])


def test_layers_are_traced_with_kinds_and_bn_links(net):
    model, v, _ = net
    infos = trace_layers(model, v, SHAPE)
    assert list(infos) == [("c1",), ("c2",), ("down",), ("dw",), ("fc1",), ("out",)]
    assert [i.kind for i in infos.values()] == ["conv", "conv", "conv", "depthwise", "dense", "dense"]
    assert infos[("c2",)].padding == ((1, 0), (2, 1)) and infos[("c2",)].rhs_dilation == (2, 2)
    assert infos[("out",)].kernel_shape == (2, 4, 3) and infos[("out",)].in_axes == (0, 1)
    assert infos[("fc1",)].use_bias and infos[("c1",)].bn is None
    from hobs_jax import models
    r20 = models.build("resnet20", num_classes=10, in_channels=1)
    ri = trace_layers(r20, jax.eval_shape(lambda: models.init(r20, jax.random.key(0), (1, 8, 8, 1))), (1, 8, 8, 1))
    assert ri[("layer2", "0", "downsample", "0")].bn == ("layer2", "0", "downsample", "1")
    assert ri[("fc",)].bn is None and ri[("layer1", "0", "conv2")].bn_eps == 1e-5


@pytest.mark.parametrize("k,stride,pads,dil", [((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
                                               ((3, 3), (2, 2), ((1, 0), (2, 1)), (2, 2)),
                                               ((1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
                                               ((2, 3), (1, 2), ((0, 1), (1, 1)), (1, 1))])
def test_conv_rows_are_hwio_ordered_im2col(k, stride, pads, dil):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
    kernel = rng.normal(size=k + (4, 5)).astype(np.float32)
    info = LayerInfo(("l",), "conv", kernel.shape, (0, 1, 2), (3,), stride, pads, (1, 1), dil)
    rows = np.asarray(conv_rows(info, jnp.asarray(x)))
    np.testing.assert_allclose(rows, numpy_im2col(x, k, stride, pads, dil), rtol=0, atol=0)
    # rows @ kernel.reshape(-1, C_out) is the convolution itself.
    y = jax.lax.conv_general_dilated(x, kernel, stride, pads, rhs_dilation=dil,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(rows @ kernel_matrix(info, kernel), np.asarray(y).reshape(-1, 5), atol=1e-4)


@pytest.mark.parametrize("k,stride,pads,dil", [((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
                                               ((3, 3), (2, 2), ((1, 0), (2, 1)), (2, 2)),
                                               ((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
                                               ((5, 3), (2, 1), ((2, 2), (0, 1)), (1, 1))])
def test_sliced_rows_equal_the_one_hot_convolution_patches(k, stride, pads, dil):
    """conv_slices (strided slices, HWIO order) against lax.conv_general_dilated_patches
    (a one-hot grouped convolution, channel-major) transposed: bit-identical values."""
    from hobs_jax.stats.layers import conv_output_hw, conv_patches, conv_slices
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 9, 7, 4)).astype(np.float32))
    info = LayerInfo(("l",), "conv", k + (4, 2), (0, 1, 2), (3,), stride, pads, (1, 1), dil)
    s = conv_slices(info, x)
    assert s.shape[1:3] == conv_output_hw(info, x.shape[1:3])
    p = conv_patches(info, x)
    ref = jnp.swapaxes(p, 1, 2).reshape(p.shape[0], -1)
    np.testing.assert_array_equal(np.asarray(s).reshape(ref.shape), np.asarray(ref))


@pytest.mark.parametrize("k,stride,pads,dil,bias", [((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
                                                    ((3, 3), (1, 2), ((1, 0), (2, 1)), (1, 2), True),
                                                    ((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), True),
                                                    ((5, 3), (1, 1), ((2, 2), (0, 1)), (1, 1), True),
                                                    ((3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), True),
                                                    ((5, 5), (1, 1), ((4, 0), (2, 2)), (1, 1), False)])
def test_row_shift_gram_equals_the_patch_gram(k, stride, pads, dil, bias):
    """The row-shift Gram (a third of the products, border rows subtracted, lower blocks
    transposed) against float64 numpy im2col rows: same matrix and bias sums."""
    from hobs_jax.stats.gram import row_shiftable, rowshift_assemble, rowshift_parts
    x = np.random.default_rng(7).normal(size=(3, 9, 7, 4)).astype(np.float32)
    info = LayerInfo(("l",), "conv", k + (4, 2), (0, 1, 2), (3,), stride, pads, (1, 1), dil, use_bias=bias)
    assert row_shiftable(info)
    g, s = rowshift_assemble(info, rowshift_parts(info, jnp.asarray(x)), x.shape[1])
    rows = numpy_im2col(x.astype(np.float64), k, stride, pads, dil)
    ref = rows.T @ rows
    np.testing.assert_allclose(np.asarray(g), ref, atol=1e-6 * np.abs(ref).max())
    assert (s is None) == (not bias)
    if bias:
        np.testing.assert_allclose(np.asarray(s), rows.sum(0), atol=1e-5)
    assert not row_shiftable(dataclasses.replace(info, strides=(2, 1)))


@pytest.mark.parametrize("k,pads,bias", [((3, 3), ((1, 1), (1, 1)), False),
                                         ((1, 1), ((0, 0), (0, 0)), True),
                                         ((5, 3), ((2, 2), (0, 1)), True),
                                         ((3, 3), ((0, 0), (0, 0)), True),
                                         ((5, 5), ((4, 0), (2, 2)), False),
                                         ((3, 3), ((3, 0), (0, 4)), True),
                                         ((1, 3), ((0, 0), (1, 1)), True)])
def test_shift2d_gram_equals_the_patch_gram(k, pads, bias):
    """The 2-D shift Gram (one product per row shift, border rows/columns/corners by
    inclusion-exclusion, lower blocks transposed) against float64 numpy im2col rows, for
    'same', 'valid', asymmetric and over-wide paddings: same matrix and bias sums."""
    from hobs_jax.stats.gram import row_shiftable, shift2d_able, shift2d_assemble, shift2d_parts
    x = np.random.default_rng(7).normal(size=(3, 9, 7, 4)).astype(np.float32)
    info = LayerInfo(("l",), "conv", k + (4, 2), (0, 1, 2), (3,), (1, 1), pads, (1, 1), (1, 1), use_bias=bias)
    assert shift2d_able(info)
    g, s = shift2d_assemble(info, shift2d_parts(info, jnp.asarray(x)), x.shape[1], x.shape[2])
    rows = numpy_im2col(x.astype(np.float64), k, (1, 1), pads, (1, 1))
    ref = rows.T @ rows
    np.testing.assert_allclose(np.asarray(g), ref, atol=1e-6 * np.abs(ref).max())
    assert (s is None) == (not bias)
    if bias:
        np.testing.assert_allclose(np.asarray(s), rows.sum(0), atol=1e-5)
    strided = dataclasses.replace(info, strides=(1, 2))
    assert not shift2d_able(strided) and row_shiftable(strided)
    assert not shift2d_able(dataclasses.replace(info, rhs_dilation=(1, 2)))


def test_chunked_accumulation_equals_one_product(net, monkeypatch):
    """On CPU the conv Grams are reduced a few images at a time (lax.scan over chunks);
    forcing tiny chunks must give the same statistics (and bias sums) as one product."""
    from hobs_jax.stats import gram
    from hobs_jax.stats.cross import cross_stats

    class Biased(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            y = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="c1")(x))
            y = nn.Conv(3, (3, 3), strides=2, padding=((1, 1), (1, 1)), name="c2")(y)
            return jnp.mean(y, axis=(1, 2))

    model = Biased()
    v = init_tiny(model, SHAPE[1:], seed=4)
    x = np.random.default_rng(6).normal(size=(8,) + SHAPE[1:]).astype(np.float32)
    whole = collect_hessians(model, v, x, batch_size=8, progress=False)
    acts = capture_inputs(model, v, jnp.asarray(x))
    outs = capture_outputs(model, v, jnp.asarray(x))[1]
    info = trace_layers(model, v, SHAPE)[("c2",)]
    c_whole = cross_stats(info, acts[("c2",)] * 0.5, outs[("c2",)])
    assert gram.chunk_size(8, 9 * 8 * 36) == 8
    monkeypatch.setattr(gram, "CHUNK_ELEMENTS", 9 * 8 * 36 * 2)  # 2 images of c1's patches
    assert gram.chunk_size(8, 9 * 8 * 36) == 2 and gram.chunk_size(7, 9 * 8 * 36) == 1
    jax.clear_caches()
    from hobs_jax.stats import hessian
    hessian.clear_compiled()
    chunked = collect_hessians(model, v, x, batch_size=8, progress=False)
    c_chunked = cross_stats(info, acts[("c2",)] * 0.5, outs[("c2",)])
    for p in whole.layers:
        scale = np.abs(whole[p].xtx).max()
        np.testing.assert_allclose(chunked[p].xtx, whole[p].xtx, atol=4e-6 * scale)  # f32 sum order
        np.testing.assert_allclose(chunked[p].xsum, whole[p].xsum, atol=1e-6 * np.abs(whole[p].xsum).max())
        assert chunked[p].count == whole[p].count
    np.testing.assert_allclose(c_chunked.r, c_whole.r, atol=1e-6 * np.abs(c_whole.r).max())
    np.testing.assert_allclose(c_chunked.a, c_whole.a, atol=4e-6 * np.abs(c_whole.a).max())
    hessian.clear_compiled()


def test_hessians_equal_numpy_on_captured_inputs_and_stream(net):
    model, v, x = net
    infos = trace_layers(model, v, SHAPE)
    acts = capture_inputs(model, v, jnp.asarray(x))
    whole = collect_hessians(model, v, x, batch_size=len(x), progress=False)
    streamed = collect_hessians(model, v, x, batch_size=3, progress=False)  # 3 + 3 + 1 (padded)
    assert whole.num_examples == streamed.num_examples == 7
    for p, info in infos.items():
        r = np.asarray(layer_rows(info, acts[p]), np.float64)
        if info.kind == "depthwise":
            ref = np.einsum("nck,ncl->ckl", r, r)
        else:
            ref = r.T @ r
        scale = np.abs(ref).max()
        assert whole[p].count == streamed[p].count == r.shape[0]
        np.testing.assert_allclose(whole[p].xtx, ref, atol=2e-6 * scale)
        np.testing.assert_allclose(streamed[p].xtx, ref, atol=2e-6 * scale)
        if info.use_bias:
            np.testing.assert_allclose(streamed[p].xsum, r.sum(0), atol=2e-6 * np.abs(r).sum(0).max())
    h = whole[("fc1",)].hessian(bias=True)
    n = whole[("fc1",)].count
    assert h.shape == (6, 6) and h[-1, -1] == 2.0  # fc1 reads 5 channels, + the constant 1
    np.testing.assert_allclose(h[:5, 5], 2.0 / n * whole[("fc1",)].xsum, rtol=1e-6)
    np.testing.assert_allclose(h[5, :5], h[:5, 5], rtol=0)
    c1 = whole[("c1",)]
    np.testing.assert_allclose(c1.hessian(), 2.0 / c1.count * c1.xtx.astype(np.float64), rtol=1e-12)


def test_float64_accumulation_is_exact_where_float32_rounds(net):
    model, v, _ = net
    # Large-offset images make float32 Gram sums visibly round (first layer: input = image).
    x = (np.random.default_rng(3).normal(size=(64,) + SHAPE[1:]) * 0.01 + 300.0).astype(np.float32)
    s32 = collect_hessians(model, v, x, paths=[("c1",)], batch_size=16, progress=False)
    s64 = collect_hessians(model, v, x, paths=[("c1",)], batch_size=16, progress=False, dtype="float64")
    info = s32[("c1",)].info
    r = numpy_im2col(x.astype(np.float64), (3, 3), (1, 1), info.padding, (1, 1))
    ref = r.T @ r
    assert s64[("c1",)].xtx.dtype == np.float64 and s32[("c1",)].xtx.dtype == np.float32
    err64 = np.abs(s64[("c1",)].xtx - ref).max() / np.abs(ref).max()
    err32 = np.abs(s32[("c1",)].xtx.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err64 < 1e-13 and err32 > 1e-9 and err64 < err32 / 1e4


def test_dampening_and_dead_inputs():
    h = np.array([[4.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    hd, dead = dampen(h, 0.1)
    assert dead.tolist() == [False, False, True]
    lam = 0.1 * (4.0 + 2.0 + 1.0) / 3  # dead diagonal set to 1 before the mean
    np.testing.assert_allclose(np.diag(hd), [4 + lam, 2 + lam, 1 + lam])
    assert hd[0, 1] == 1.0 and hd[2, 0] == 0.0
    np.linalg.cholesky(hd)  # positive definite
    with pytest.raises(ValueError, match="damp"):
        dampen(h, -1.0)


def test_dead_channel_in_a_network_has_zero_diagonal(net):
    model, v, x = net
    v = jax.tree.map(np.array, v)
    v["params"]["c1"]["kernel"][..., 2] = 0.0  # channel 2 of c1's output is always 0 (then ReLU)
    st = collect_hessians(model, v, x, paths=[("c2",), ("down",)], batch_size=4, progress=False)
    diag = np.diag(st[("c2",)].xtx).reshape(9, 6)  # (tap, channel)
    assert np.all(diag[:, 2] == 0) and np.all(diag[:, [0, 1, 3, 4, 5]].sum(0) > 0)
    assert np.diag(st[("down",)].xtx)[2] == 0


def test_bad_input_is_a_one_line_error(net):
    model, v, x = net
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        collect_hessians(model, v, x[0], progress=False)
    with pytest.raises(ValueError, match="floating"):
        collect_hessians(model, v, x.astype(np.int32), progress=False)
    bad = x.copy()
    bad[4, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image 4 has NaN"):
        collect_hessians(model, v, bad, progress=False)
    with pytest.raises(ValueError, match="no Conv/Dense layer at 'nope'"):
        collect_hessians(model, v, x, paths=[("nope",)], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        collect_hessians(model, v, x, dtype="float16", progress=False)
    huge = jax.tree.map(np.array, v)
    huge["params"]["c1"]["kernel"][:] = 3e38  # overflows to inf inside the network
    with pytest.raises(ValueError, match=r"batch 0: the input of layer (c2|down) has NaN/Inf") as e:
        collect_hessians(model, huge, x, batch_size=8, progress=False)
    assert "\n" not in str(e.value)


def test_layers_of_one_shape_share_one_compiled_reduction():
    """Calibration reduces each layer in a function jitted per layer *shape*: six
    identical 3x3 convs (and a differently shaped one) compile two reductions, not seven,
    and their statistics still differ per layer (each from its own input)."""
    from hobs_jax.stats import hessian

    class Chain(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for i in range(6):
                x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f"c{i}")(x))
            return nn.Conv(2, (1, 1), use_bias=False, name="head")(x)

    model = Chain()
    v = init_tiny(model, (6, 6, 4), seed=3)
    x = np.random.default_rng(1).normal(size=(5, 6, 6, 4)).astype(np.float32)
    jax.clear_caches()
    hessian.reset_compile_count()
    st = collect_hessians(model, v, x, batch_size=5, progress=False, workers=1)
    assert hessian.compiled_reductions() == 2
    ins = capture_inputs(model, v, jnp.asarray(x))
    for p, s in st.layers.items():
        rows = np.asarray(conv_rows(s.info, ins[p]), np.float64)
        np.testing.assert_allclose(s.xtx, rows.T @ rows, rtol=1e-5, atol=1e-5 * np.abs(rows.T @ rows).max())
