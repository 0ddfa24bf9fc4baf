"""The sensitivity analyzer (hobs_jax.analysis.sensitivity): its CLI end to end on a
quarter-width ResNet-20 checkpoint at 14x14 (JSON schema, PNGs), the exact properties
of the reconstruction curves (0 at keep 1.0, compensation never hurts, monotone without
dampening, equal to the error of the actual layer outputs), Fisher traces against a
direct per-example gradient loop, and one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hobs_jax import models
from hobs_jax.analysis import sensitivity as S
from hobs_jax.graph import build_graph
from hobs_jax.methods import group_roles
from hobs_jax.stats import collect_hessians, reestimate_bn
from hobs_jax.stats.layers import capture_inputs, kernel_matrix, layer_rows, trace_layers

SIZE = 14


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A quarter-width ResNet-20 (random weights, BN statistics estimated on Fashion-MNIST
    so activations have trained-network scale) saved as a checkpoint, its calibration
    images, and the analyzer's output directory after one CLI run."""
    from hobs_jax.data import get_source
    from hobs_jax.export import save

    src = get_source("fashion_mnist", augment=False, resize_to=(SIZE, SIZE))
    x, y = src.batch("train", np.arange(256), train=False)
    widths = {k: max(2, v // 4) for k, v in models.default_widths("resnet20").items()}
    model = models.build("resnet20", widths=widths, num_classes=10, in_channels=1)
    v = models.random_variables(model, (1, SIZE, SIZE, 1), seed=0)
    v = jax.device_get(reestimate_bn(model, v, [x[:128], x[128:]]))
    root = tmp_path_factory.mktemp("sens")
    path = save(root / "ckpt", "resnet20", v)
    out = root / "out"
    S.main(["--checkpoint", str(path), "--out", str(out), "--resize", str(SIZE), "--calib", "96",
            "--fisher-examples", "20", "--feature-examples", "16", "--batch-size", "48", "--no-progress"])
    with open(out / "sensitivity.json") as f:
        result = json.load(f)
    return model, v, path, out, result


def test_cli_writes_the_json_schema_and_readable_pngs(ckpt):
    import matplotlib.image

    model, v, _, out, r = ckpt
    assert r["schema"] == 1 and r["model"] == "resnet20" and r["calibration_images"] == 96
    assert r["input_shape"] == [SIZE, SIZE, 1] and r["ratios"] == list(S.RATIOS)
    assert r["command"].startswith("python -m hobs_jax.analysis.sensitivity --checkpoint")
    assert set(r["timings"]) == {"calibration", "curves", "fisher", "feature_error"}
    graph = build_graph(model, v, (1, SIZE, SIZE, 1), name="resnet20")
    assert [g["id"] for g in r["groups"]] == [g.id for g in graph.prunable]
    with_curves = [g for g in r["groups"] if "hobs" in g]
    assert len(with_curves) == 12  # every ResNet-20 group has consumers
    for g in r["groups"]:
        assert g["fisher_trace"] > 0 and g["fisher_params"] > 0
        assert g["fisher_per_param"] == pytest.approx(g["fisher_trace"] / g["fisher_params"])
    for g in with_curves:
        assert len(g["keep"]) == len(g["hobs"]) == len(g["hobs_nocomp"]) == len(g["magnitude"]) == 10
        assert g["keep"][0] == g["size"] and g["keep"][-1] == max(1, round(0.1 * g["size"]))
        assert g["compensated"] and g["consumers"]
    fe = r["feature_error"]
    n = len(fe["layers"])
    assert n == 22 and fe["layers"][0] == "conv1" and fe["layers"][-1] == "fc"  # 19 convs, 2 downsample, fc
    assert all(len(fe[k]) == n for k in S.CURVES)
    assert abs(fe["macs_ratio"] - 0.5) <= 0.01 * 0.5
    assert all(fe[k][0] == 0.0 for k in S.CURVES)  # the stem's input is not pruned
    # Compensation repairs the deepest layers better than no compensation does.
    assert np.mean(fe["hobs"][1:]) < np.mean(fe["hobs_nocomp"][1:])
    for name in ("curves.png", "fisher.png", "feature_error.png"):
        img = matplotlib.image.imread(os.fspath(out / name))
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600
        assert float(img[..., :3].std()) > 0.05  # not a blank canvas


def test_curves_are_zero_at_full_keep_and_compensation_never_hurts(ckpt):
    r = ckpt[-1]
    strictly_better = 0
    for g in (g for g in r["groups"] if "hobs" in g):
        for k in S.CURVES:
            assert g[k][0] == 0.0
            pruned = np.asarray(g["keep"]) < g["size"]
            assert np.all(np.asarray(g[k])[pruned] > 0) and np.all(np.asarray(g[k])[~pruned] == 0)
        h, n = np.asarray(g["hobs"]), np.asarray(g["hobs_nocomp"])
        assert np.all(h <= n * (1 + 1e-9) + 1e-15), g["id"]  # exact (module docstring)
        strictly_better += int(np.all(h[pruned] < n[pruned]))
        # Nearly monotone with the default 1% dampening (exact without, next test).
        assert np.all(np.diff(h) >= -0.02 * h[1:]), (g["id"], h)
        assert h[-1] > h[1]
    assert strictly_better >= 10


@pytest.fixture(scope="module")
def stats(ckpt):
    model, v, *_ = ckpt
    from hobs_jax.data import get_source

    x, y = get_source("fashion_mnist", augment=False, resize_to=(SIZE, SIZE)).batch("train", np.arange(64),
                                                                                      train=False)
    infos = trace_layers(model, v, (1, SIZE, SIZE, 1))
    graph = build_graph(model, v, (1, SIZE, SIZE, 1), name="resnet20")
    st = collect_hessians(model, v, x, batch_size=64, progress=False, infos=infos)
    return model, v, x, infos, graph, st


def test_undampened_curves_are_monotone_and_equal_the_output_error(stats):
    model, v, x, infos, graph, st = stats
    curves = S.reconstruction_curves(graph, v, st, infos, damp=0.0, ratios=(1.0, 0.75, 0.5, 0.25))
    for gid, c in curves.items():
        h = np.asarray(c["hobs"])
        assert np.all(np.diff(h) >= -1e-9 * h[1:]), (gid, h)  # nested least squares
        assert np.all(h <= np.asarray(c["hobs_nocomp"]) * (1 + 1e-9) + 1e-15)
    # The Gram-based error of the magnitude curve equals ||X W - X W'||^2 / ||X W||^2
    # computed from the consumers' actual inputs (im2col rows), here for the stream g0.
    roles = group_roles(graph, infos)
    gid = 0
    c = curves[gid]
    assert c["consumers"] == [s.layer.name for s in roles[gid].consumers] and len(c["consumers"]) == 5
    from hobs_jax.graph import group_l2_scores

    removed = np.argsort(group_l2_scores(graph, v)[gid], kind="stable")[:graph.group(gid).size - c["keep"][2]]
    xin = capture_inputs(model, v, jnp.asarray(x), [s.layer.path for s in roles[gid].consumers])
    err = ref = 0.0
    for site in roles[gid].consumers:
        rows = np.asarray(layer_rows(site.layer, xin[site.layer.path]), np.float64)
        w = kernel_matrix(site.layer, _leaf(v["params"], site.layer.path)["kernel"]).astype(np.float64)
        w2 = w.copy()
        w2[np.isin(site.channel, removed)] = 0.0
        # Per output position, as H = (2/n) X^T X weighs each consumer (stride-2 convs
        # have a quarter of the rows).
        err += float(np.sum((rows @ (w - w2)) ** 2)) / len(rows)
        ref += float(np.sum((rows @ w) ** 2)) / len(rows)
    assert c["magnitude"][2] == pytest.approx(err / ref, rel=1e-4)


def _leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_fisher_traces_match_a_per_example_gradient_loop():
    from tests._tiny import TinyCNN, init_tiny

    model = TinyCNN(width=4)
    v = init_tiny(model, (8, 8, 1), seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 7).astype(np.int32)
    graph = build_graph(model, v, (1, 8, 8, 1))
    got = S.fisher_traces(model, v, graph, x, y, batch_size=3)  # 3 batches, the last padded

    def loss(p, xi, yi):
        logits = model.apply({"params": p, "batch_stats": v["batch_stats"]}, xi[None], train=False)[0]
        return -jax.nn.log_softmax(logits)[yi]

    grads = [jax.grad(loss)(v["params"], x[i], y[i]) for i in range(7)]
    sq = lambda f: sum(np.asarray(f(g), np.float64) ** 2 for g in grads) / 7  # noqa: E731
    # conv0's output channels: conv0 kernel [3,3,1,4] axis 3, bn0 scale/bias, conv1 kernel axis 2.
    g0 = graph.axis("params", ("conv0", "kernel"), 3).layout.group
    want = (sq(lambda g: g["conv0"]["kernel"]).sum((0, 1, 2)) + sq(lambda g: g["bn0"]["scale"])
            + sq(lambda g: g["bn0"]["bias"]) + sq(lambda g: g["conv1"]["kernel"]).sum((0, 1, 3)))
    np.testing.assert_allclose(got[g0]["per_channel"], want, rtol=1e-4)
    assert got[g0]["trace"] == pytest.approx(want.sum(), rel=1e-4)
    assert got[g0]["params"] == 4 * (9 + 2 + 9 * 8)
    # conv1's output channels feed the global mean and the classifier's rows.
    g1 = graph.axis("params", ("conv1", "kernel"), 3).layout.group
    want1 = (sq(lambda g: g["conv1"]["kernel"]).sum((0, 1, 2)) + sq(lambda g: g["bn1"]["scale"])
             + sq(lambda g: g["bn1"]["bias"]) + sq(lambda g: g["head"]["kernel"]).sum(1))
    np.testing.assert_allclose(got[g1]["per_channel"], want1, rtol=1e-4)
    with pytest.raises(ValueError, match=r"labels must be \[N\] integers"):
        S.fisher_traces(model, v, graph, x, y[:3])


def test_bad_input_is_a_one_line_error(ckpt, tmp_path, capsys):
    model, v, path, *_ = ckpt

    def cli_fails(match, *args):
        with pytest.raises(SystemExit) as e:
            S.main(["--out", str(tmp_path / "o"), "--no-progress", *args])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert match in err, err

    cli_fails("no hobs_jax checkpoint at", "--checkpoint", str(tmp_path / "missing"))
    cli_fails("--target=1.5 must be in (0, 1)", "--checkpoint", str(path), "--target", "1.5")
    cli_fails("--calib=0 must be >= 1", "--checkpoint", str(path), "--calib", "0")
    cli_fails("unknown data source 'nope'", "--checkpoint", str(path), "--dataset", "nope")
    assert not os.path.exists(tmp_path / "o")  # nothing half-written
    x = np.zeros((4, SIZE, SIZE, 1), np.float32)
    y = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"keep ratios must be .* in \(0, 1\]"):
        S.analyze(model, v, x, y, ratios=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\)"):
        S.analyze(model, v, x, y[:3])
    with pytest.raises(ValueError, match="floating point"):
        S.analyze(model, v, x.astype(np.uint8), y)
    with pytest.raises(ValueError, match=r"target=1.0"):
        S.analyze(model, v, x, y, target=1.0)
