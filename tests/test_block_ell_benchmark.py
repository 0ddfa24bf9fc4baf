"""The Block-ELL study's bookkeeping (``benchmarks/block_ell.py``, code in
:mod:`hobs_jax.experiments.studies.block_ell`): shapes, merging CPU and GPU records,
break-even interpolation, the per-device result tables (no timing here)."""

import pytest


@pytest.fixture(scope="module")
def bench():
    from hobs_jax.experiments.studies import block_ell

    return block_ell


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


def test_tables_split_by_device_and_mark_unmeasured_gpu_rows():
    from hobs_jax.experiments.studies import block_ell_tables
    from hobs_jax.experiments.table import SCHEMA

    cpu = [_rec("cpu", "xla_scatter", s, sp, dtype="float32")
           for s, sp in ((0.5, 0.8), (0.75, 1.6), (0.9, 4.0))]
    by = {t.name: t for t in block_ell_tables.tables(cpu)}
    assert set(by) == {"block_ell", "block_ell_cpu", "block_ell_cpu_square", "block_ell_cpu_breakeven"}
    assert "not yet measured (no GPU lent)" in by["block_ell"].to_markdown()
    assert [g.met for g in by["block_ell"].goals] == [None, None]
    assert "| 64 | 0.80x (xla_scatter) | 1.60x (xla_scatter) | 4.00x (xla_scatter) |" in \
        by["block_ell_cpu_square"].to_markdown()
    assert "| 64 | 56% |" in by["block_ell_cpu_breakeven"].to_markdown()  # 0.5 + 0.2/0.8 * 0.25
    assert by["block_ell_cpu"].to_dict()["schema"] == SCHEMA
    gpu = [_rec("NVIDIA H100 80GB HBM3", "pallas_mosaic", s, sp) for s, sp in ((0.5, 0.9), (0.6, 1.1), (0.9, 4.2))]
    for r in gpu:
        r["index"] = "static"
    by = {t.name: t for t in block_ell_tables.tables(cpu + gpu)}
    goal = by["block_ell"]
    assert goal.context == {"device": "NVIDIA H100 80GB HBM3"} and "not yet measured" not in goal.to_markdown()
    assert [g.met for g in goal.goals] == [True, True] and "block_ell_h100_square" in by


def test_devtime_parses_kernels_per_annotated_call(tmp_path):
    """Synthetic perfetto trace: two annotated calls, kernels on a GPU stream, plus
    events that must be ignored (an 'XLA Ops' line, a host thread)."""
    import gzip
    import json

    from kernels.devtime import PREFIX, parse_trace

    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #13"}},
        {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    x = lambda pid, tid, ts, dur, name="k": {"ph": "X", "pid": pid, "tid": tid, "ts": ts,
                                             "dur": dur, "name": name}
    events = meta + [
        x(1, 1, 0, 50, f"{PREFIX}0"), x(2, 7, 10, 20), x(2, 7, 40, 30), x(2, 8, 10, 60),
        x(1, 1, 100, 50, f"{PREFIX}1"), x(2, 7, 120, 5),
        x(1, 1, 200, 10, f"{PREFIX}2"),  # launched nothing
    ]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    out = parse_trace(str(path))
    assert set(out) == {0, 1}
    assert out[0] == {"span_ms": 0.060, "busy_ms": 0.050, "kernels": 2.0}
    assert out[1] == {"span_ms": 0.005, "busy_ms": 0.005, "kernels": 1.0}


def test_mosaic_tiles_fit_shared_memory():
    import jax.numpy as jnp

    from kernels.pallas_mosaic import SMEM_BYTES, fit_smem

    assert fit_smem(256, 64, 4, jnp.bfloat16) == (256, 4)
    assert fit_smem(256, 128, 4, jnp.bfloat16) == (256, 2)  # 4 steps would need 384 KiB
    assert fit_smem(256, 128, 3, jnp.float32) == (64, 2)  # 4-byte items: 96 KiB a step
    for bm, b, st in [(256, 128, 5), (128, 128, 4), (256, 16, 8)]:
        bm2, st2 = fit_smem(bm, b, st, jnp.bfloat16)
        assert st2 * (bm2 * b + b * b) * 2 <= SMEM_BYTES and st2 >= 2
