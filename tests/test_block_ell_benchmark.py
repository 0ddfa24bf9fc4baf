"""benchmarks/block_ell.py bookkeeping: shapes, merging CPU and GPU records,
break-even interpolation, the Markdown report (no timing here)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "block_ell.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("block_ell_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rec(device, backend, sparsity, speedup, label="square4096", dtype="bfloat16", block=64):
    return dict(device=device, backend=backend, dtype=dtype, m=4096, k=4096, n=4096,
                block=block, sparsity=sparsity, dense_ms=10.0, sparse_ms=10.0 / speedup,
                speedup=speedup, label=label)


def test_resnet50_shapes(bench):
    shapes = {label: (m, k, n) for label, m, k, n in bench.resnet50_1x1_shapes(32)}
    assert len(shapes) == 15
    assert shapes["resnet50.layer1.conv3+layer1.0.downsample"] == (32 * 56 * 56, 64, 256)
    assert shapes["resnet50.layer2.0.conv1"] == (32 * 56 * 56, 256, 128)  # stride on the 3x3
    assert shapes["resnet50.layer4.conv3"] == (32 * 7 * 7, 512, 2048)
    assert bench.vit_b_mlp_shapes(2) == [("vit_b.mlp.fc1", 394, 768, 3072),
                                         ("vit_b.mlp.fc2", 394, 3072, 768)]


def test_merge_keeps_other_devices_and_replaces_same_key(bench):
    gpu = [_rec("NVIDIA H100 80GB HBM3", "pallas_mosaic", 0.9, 5.0)]
    cpu_old = [_rec("cpu", "xla_scatter", 0.9, 2.0)]
    cpu_new = [_rec("cpu", "xla_scatter", 0.9, 3.0), _rec("cpu", "xla_gather", 0.9, 1.5)]
    merged = bench.merge(gpu + cpu_old, cpu_new)
    assert len(merged) == 3
    by = {(r["device"], r["backend"]): r["speedup"] for r in merged}
    assert by[("NVIDIA H100 80GB HBM3", "pallas_mosaic")] == 5.0
    assert by[("cpu", "xla_scatter")] == 3.0


def test_break_even_interpolation(bench):
    assert bench.break_even([(0.5, 0.5), (0.75, 1.5)]) == (pytest.approx(0.625), False)
    assert bench.break_even([(0.5, 1.2), (0.9, 3.0)]) == (0.5, True)
    assert bench.break_even([(0.5, 0.2), (0.9, 0.8)]) == (None, False)


def test_report_marks_unmeasured_gpu_rows(bench):
    cpu = [_rec("cpu", "xla_scatter", s, sp, dtype="float32")
           for s, sp in ((0.5, 0.8), (0.75, 1.6), (0.9, 4.0))]
    md = bench.render_md(cpu)
    assert "not yet measured (no GPU lent)" in md
    assert "| 64 | 0.80x (xla_scatter) | 1.60x (xla_scatter) | 4.00x (xla_scatter) |" in md
    assert "| 64 | 56% |" in md  # interpolated break-even 0.5 + 0.2/0.8 * 0.25
    gpu = [_rec("NVIDIA H100 80GB HBM3", "pallas_mosaic", 0.9, 5.0)]
    md = bench.render_md(cpu + gpu)
    assert "not yet measured" not in md and "NVIDIA H100 80GB HBM3" in md
