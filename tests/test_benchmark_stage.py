"""The pipeline's benchmark stage on hobs_jax.bench: runtimes from the config, dense vs
pruned rows with p50 and p95, and the report's bold line naming the unaligned widths."""

import pytest

from hobs_jax.pipeline import base_config, validate
from hobs_jax.pipeline import benchmark_stage as bs
from hobs_jax.pipeline.report import latency_lines, render


def _config(**bench):
    c = base_config("resnet20")
    c.data.source, c.data.image_size = "synthetic", 16
    c.stages = "benchmark"
    for k, v in bench.items():
        c.benchmark[k] = v
    return c


def test_runtimes_from_config_and_one_line_errors():
    assert bs.runtimes_of(_config(runtimes="xla, onnxruntime")) == ("xla", "onnxruntime")
    assert bs.runtimes_of(_config())[0] == "xla"  # the default starts with XLA
    with pytest.raises(ValueError, match=r"benchmark.runtimes='xla,tf': unknown runtime 'tf'; known: xla") as e:
        validate(_config(runtimes="xla,tf"))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"benchmark.rounds/threads=0/0: rounds >= 1"):
        validate(_config(rounds=0))
    with pytest.raises(ValueError, match=r"benchmark.clock='cpu': 'wall', or 'cpu' with benchmark.threads=1"):
        validate(_config(clock="cpu"))
    validate(_config(clock="cpu", threads=1))


def test_unaligned_widths_skip_unchanged_entries_and_head_counts():
    dense = {"conv1": 16, "layer1.0.conv1": 16, "layer2": 32, "enc.heads": 12}
    pruned = {"conv1": 16, "layer1.0.conv1": 7, "layer2": 24, "enc.heads": 5}
    assert bs.unaligned_widths(dense, pruned, 8) == {"layer1.0.conv1": 7}
    assert bs.unaligned_widths(dense, pruned, 16) == {"layer1.0.conv1": 7, "layer2": 24}


def test_not_faster_uses_the_measured_quantum_when_cached(tmp_path, monkeypatch):
    from hobs_jax.allocation import alignment

    monkeypatch.setenv("HOBS_JAX_CACHE", str(tmp_path))
    rows = [{"runtime": "xla", "device": "cpu", "dtype": "float32", "batch": 1, "speedup": 0.8},
            {"runtime": "xla", "device": "cpu", "dtype": "float32", "batch": 64, "speedup": 1.3},
            {"runtime": "onnxruntime", "device": "cpu", "dtype": "float32", "batch": 64, "speedup": 1.1}]
    dense, pruned = {"a": 16, "b": 32}, {"a": 7, "b": 24}
    (nf,) = bs.not_faster(rows, dense, pruned, None)
    assert nf["batches"] == [1] and nf["speedups"] == [0.8]
    assert nf["quantum"] == alignment.quantum_for("xla", alignment.device_class())
    assert nf["quantum_source"].startswith("default for")
    # A staircase measured on this very device overrides the default.
    widths = tuple(range(1, 33))
    stairs = alignment.Staircase("xla", alignment.device_class(), alignment.Layer("conv3x3", 8), widths,
                                 tuple(1.0 + ((w + 3) // 4) for w in widths))
    alignment.save_staircases([stairs], alignment.device_id())
    (nf,) = bs.not_faster(rows, dense, pruned, None)
    assert (nf["quantum"], nf["quantum_source"]) == (4, "measured here")
    assert nf["unaligned"] == {"a": 7}


def test_report_shows_p50_p95_and_says_in_bold_where_pruned_is_slower():
    s = {"model": "resnet20", "method": "hobs", "target": 0.5, "metric": "macs", "acc_dense": 0.93,
         "acc_pruned": 0.92, "top5_dense": None, "top5_pruned": None, "macs_dense": 10, "macs_pruned": 5,
         "params_dense": 4, "params_pruned": 2, "macs_ratio": 0.5, "params_ratio": 0.5, "acc_oneshot": 0.9,
         "acc_bn_recalibrated": 0.91, "device": "cpu", "latency_device": "Xeon (avx512f), 2 cores",
         "latency_rounds": 5, "stage_seconds": {"benchmark": 3.0}, "latency_speedup": 0.78,
         "latency": [{"runtime": "xla", "device": "cpu", "dtype": "float32", "batch": 1, "dense_ms": 2.71,
                      "pruned_ms": 3.47, "dense_p95_ms": 2.9, "pruned_p95_ms": 3.6, "speedup": 0.78},
                     {"runtime": "onnxruntime", "device": "cpu", "dtype": "float32", "batch": 64,
                      "dense_ms": 53.0, "pruned_ms": 34.4, "dense_p95_ms": 55.0, "pruned_p95_ms": 36.0,
                      "speedup": 1.54}],
         "latency_not_faster": [{"runtime": "xla", "device": "cpu", "dtype": "float32", "batches": [1],
                                 "speedups": [0.78], "quantum": 8, "quantum_source": "measured here",
                                 "unaligned": {"layer1.0.conv1": 7, "layer1.2.conv1": 9}}],
         "latency_not_timed": [{"model": "pruned", "runtime": "torch", "batch": 1, "reason": "skipped: x"},
                               {"model": "pruned", "runtime": "torch", "batch": 64, "reason": "skipped: x"}]}
    md = render(s)
    assert "| XLA | 1 | 2.710 | 2.900 | 3.470 | 3.600 | 0.78x |" in md
    assert "| ONNX Runtime | 64 | 53.000 | 55.000 | 34.400 | 36.000 | 1.54x |" in md
    assert ("**The pruned network is not faster than dense in XLA (cpu, float32) at batch 1 (0.78x). Pruned "
            "widths that are not multiples of XLA's width quantum 8 (measured here): layer1.0.conv1 7, "
            "layer1.2.conv1 9.**") in md
    assert "Not timed: pruned in torch eager at batch 1,64: skipped: x" in md
    # Old-style rows (before runtimes were recorded) still render.
    old = dict(s, latency=[{"batch": 1, "dense_ms": 1.0, "pruned_ms": 0.5, "speedup": 2.0}],
               latency_not_faster=None, latency_not_timed=None)
    assert "| XLA | 1 | 1.000 | - | 0.500 | - | 2.00x |" in "\n".join(latency_lines(old))


@pytest.mark.slow
def test_stage_times_dense_and_pruned_and_reports_p95(tmp_path):
    from hobs_jax import export, models
    from hobs_jax.pipeline.context import Context
    from hobs_jax.pipeline.workdir import Workdir

    c = _config(runtimes="xla", batch_sizes="1,2", iters=2, rounds=2, warmup=1)  # ORT etc.: test_bench.py
    c.lock()
    wd = Workdir(str(tmp_path))
    ctx = Context(c, wd)
    dense_w = {k: max(1, v // 4) for k, v in models.default_widths("resnet20").items()}
    pruned_w = dict(dense_w, **{"layer1.0.conv1": 3, "layer3.1.conv1": 13})
    for stage, w in (("train", dense_w), ("prune", pruned_w)):
        m = models.build("resnet20", widths=w, in_channels=1)
        export.save(ctx.model_dir(stage), m, models.random_variables(m, (1, 16, 16, 1)))
    wd.finish("prune", c, {}, 0.0)
    out = bs.run(ctx)
    assert out["runtimes"] == ["xla"] and [(r["runtime"], r["batch"]) for r in out["rows"]] == [("xla", 1),
                                                                                                ("xla", 2)]
    for r in out["rows"]:
        assert 0 < r["dense_ms"] <= r["dense_p95_ms"] and 0 < r["pruned_ms"] <= r["pruned_p95_ms"]
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["pruned_ms"])
    assert out["speedup"] == out["rows"][0]["speedup"]
    for nf in out["not_faster"]:
        assert set(nf["unaligned"]) <= {"layer1.0.conv1", "layer3.1.conv1"}
    assert (tmp_path / "benchmark" / "results.csv").exists() and (tmp_path / "benchmark" / "summary.md").exists()
