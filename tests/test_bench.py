"""The inference benchmark suite (hobs_jax.bench): statistics, model specs, bad input,
the worker protocol, verification, and one small end-to-end run (no timed assertions)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hobs_jax import bench
from hobs_jax.bench import ModelSpec, Options, run_suite, sysinfo
from hobs_jax.bench.protocol import Worker, WorkerError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"conv1": 4, "layer1.0.conv1": 4, "layer1.1.conv1": 4, "layer1.2.conv1": 4, "layer2": 8,
        "layer2.0.conv1": 8, "layer2.1.conv1": 8, "layer2.2.conv1": 8, "layer3": 16,
        "layer3.0.conv1": 16, "layer3.1.conv1": 16, "layer3.2.conv1": 16}
SHAPE = (16, 16, 1)
QUICK = Options(batch_sizes=(1, 2), warmup=1, iters=2, rounds=2, devices=("cpu",))


def _save_tiny(path, seed=0, widths=TINY):
    from hobs_jax import export, models

    model = models.build("resnet20", widths=widths, in_channels=1)
    variables = models.random_variables(model, (1,) + SHAPE, seed=seed)
    export.save(str(path), model, variables)
    return model, variables


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny"
    _save_tiny(path)
    return str(path)


# -- pure parts ------------------------------------------------------------------------------

def test_latency_stats_pools_rounds_and_keeps_the_quietest_round():
    s = bench.latency_stats([[1.0, 2.0, 3.0], [10.0, 11.0, 12.0]], batch=4)
    assert s["p50_ms"] == pytest.approx(6.5) and s["min_ms"] == 1.0 and s["samples"] == 6
    assert s["best_ms"] == 2.0  # the smaller per-round median
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= 12.0
    assert s["mean_ms"] == pytest.approx(6.5) and s["std_ms"] == pytest.approx(np.std([1, 2, 3, 10, 11, 12], ddof=1))
    assert s["throughput_ips"] == pytest.approx(4 * 1e3 / 6.5)
    with pytest.raises(ValueError, match="no timed calls"):
        bench.latency_stats([[]], 1)


def test_relative_error_is_scale_free():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert bench.relative_error(ref + 4e-5, ref) == pytest.approx(1e-5)
    assert bench.relative_error(100 * (ref + 4e-5), 100 * ref) == pytest.approx(1e-5)
    assert bench.relative_error(np.full((2, 2), np.nan), ref) == float("inf")
    with pytest.raises(ValueError, match=r"output shape \(2,\) differs from Flax's \(2, 2\)"):
        bench.relative_error(np.zeros(2), ref)


def test_parse_model_zoo_and_saved(tiny_saved, tmp_path):
    s = bench.parse_model("resnet20:input=16x16x1,scale=0.25,label=small,seed=3")
    assert (s.zoo, s.label, s.input_shape, s.in_channels, s.seed) == ("resnet20", "small", SHAPE, 1, 3)
    assert ModelSpec.from_zoo("resnet20", input_shape=(28, 28, 1)).in_channels == 1
    assert s.widths == TINY
    widths = tmp_path / "w.json"
    widths.write_text(json.dumps({"conv1": 8}))
    assert bench.parse_model(f"resnet20:widths={widths}").widths == {"conv1": 8}
    r8 = bench.parse_model(f"resnet20:widths={tiny_saved},round=8,scale=1.5")  # scale, then round up
    assert r8.widths == {k: -(-round(v * 1.5) // 8) * 8 for k, v in TINY.items()}
    saved = bench.parse_model(f"{tiny_saved}:label=pruned,input=16x16x1")
    assert (saved.path, saved.label, saved.input_shape) == (tiny_saved, "pruned", SHAPE)
    assert bench.parse_model(tiny_saved).label == "tiny"


@pytest.mark.parametrize("text,match", [
    ("resnet5", r"--model 'resnet5': neither a saved model directory nor a zoo model"),
    ("resnet20:input=16x16", r"input '16x16' must be HxWxC"),
    ("resnet20:depth=3", r"unknown option 'depth' for a zoo model"),
    ("resnet20:scale=-1", r"scale must be > 0"),
    ("resnet20:label=a|b", r"model label 'a\|b'"),
])
def test_parse_model_errors_are_one_line(text, match):
    with pytest.raises(ValueError, match=match) as e:
        bench.parse_model(text)
    assert "\n" not in str(e.value)


def test_unknown_and_missing_runtimes_name_the_package():
    with pytest.raises(ValueError, match=r"unknown runtime 'tensorflow'; known: xla, onnxruntime, torch, "
                                         r"torch-compile, tensorrt"):
        bench.runtimes.resolve("xla,tensorflow")
    missing = bench.Runtime("fancy", "Fancy", (("torch", ("no_such_module_xyz",)),), "pip install fancy-rt",
                            {"cpu": ("float32",)}, {"cpu": ("float32",)})
    with pytest.raises(ValueError, match=r"runtime 'fancy' is not installed here: pip install fancy-rt"):
        missing.check_installed()
    if not sysinfo.installed("torch_tensorrt") and not sysinfo.installed("tensorrt"):
        with pytest.raises(ValueError, match=r"runtime 'tensorrt' is not installed here: pip install torch-tensorrt"):
            bench.runtimes.resolve(["tensorrt"])
    # Not named: every runtime is planned, the missing ones become skipped rows.
    resolved, explicit = bench.runtimes.resolve(None)
    assert not explicit and [r.name for r, _ in resolved] == list(bench.RUNTIMES)


@pytest.mark.parametrize("kw,match", [
    ({"batch_sizes": (1, 0)}, r"batch sizes \[1, 0\]: positive ints"),
    ({"iters": 0}, r"iters=0: must be an int >= 1"),
    ({"rounds": 0}, r"rounds=0"),
    ({"devices": ("tpu",)}, r"unknown device 'tpu'; use cpu, gpu"),
    ({"dtypes": ("int8",)}, r"unknown dtype 'int8'"),
    ({"clock": "cpu", "threads": 2}, r"clock='cpu' needs threads=1 and CPU devices only"),
    ({"clock": "gpu"}, r"clock='gpu': use 'wall' or 'cpu'"),
])
def test_bad_options_fail_before_anything_runs(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_suite([ModelSpec.from_zoo("resnet20")], ["xla"], Options(**kw), out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_check_batches_finds_the_batch_a_model_cannot_take():
    import flax.linen as nn
    import jax.numpy as jnp

    from hobs_jax.bench.backend_jax import check_batches

    class PairsOnly(nn.Module):  # reshapes its input into pairs: odd batches cannot run
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x.reshape(-1, 2, x.shape[1] * x.shape[2] * x.shape[3]).mean(1))

    from hobs_jax.bench.backend_jax import apply_fn

    m = PairsOnly()
    v = m.init(__import__("jax").random.key(0), jnp.zeros((2, 4, 4, 1)))
    bad = check_batches(apply_fn(m), v, (4, 4, 1), [2, 3, 8, 0])
    assert [b for b, _ in bad] == [3, 0]
    assert "positive" in bad[1][1] and "\n" not in bad[0][1]


def test_summary_marks_a_slower_model_and_gives_jax_vs_torch_ratios():
    def row(model, runtime, batch, p50):
        r = {k: None for k in bench.COLUMNS}
        r.update(model=model, runtime=runtime, framework="x", device="cpu", dtype="float32", batch=batch,
                 status="ok", p50_ms=p50, p95_ms=p50 * 1.1, p99_ms=p50 * 1.2, std_ms=0.1,
                 throughput_ips=batch * 1e3 / p50, compile_s=1.0, verify_rel_err=1e-7)
        return r

    rows = [row("dense", "xla", 1, 2.0), row("pruned", "xla", 1, 2.5), row("dense", "torch", 1, 5.0),
            row("pruned", "torch", 1, 4.0)]
    sp = {s["runtime"]: s["speedup"] for s in bench.speedups(rows, "dense", "pruned")}
    assert sp == {"xla": pytest.approx(0.8), "torch": pytest.approx(1.25)}
    meta = {"machine": sysinfo.machine(), "options": Options().__dict__, "load_average_end": [1.0]}
    models = [{"label": m, "input_shape": [16, 16, 1], "macs": 1e6, "params": 1e4, "zoo": "resnet20"}
              for m in ("dense", "pruned")]
    md = bench.summary_markdown(bench.SuiteResult(meta, models, rows), baseline="dense")
    assert "| cpu | float32 | 1 | 2.000 | 2.50 |" in md  # torch eager / XLA for dense
    assert "| XLA | cpu | float32 | 1 | 2.000 | 2.500 | **0.80x** |" in md
    assert "| torch eager | cpu | float32 | 1 | 5.000 | 4.000 | 1.25x |" in md


def test_sysinfo_records_cpu_isa_and_versions():
    m = sysinfo.machine()
    assert m["cpu"]["cores"] >= 1 and m["cpu"]["isa"] != ""
    assert m["versions"]["jax"] and m["versions"]["python"]
    assert set(m["git"]) == {"commit", "dirty"}


# -- the worker protocol -------------------------------------------------------------------------

def test_worker_protocol_prepare_time_release(tiny_saved, tmp_path):
    x = np.random.default_rng(0).standard_normal((2,) + SHAPE, dtype=np.float32)
    np.save(tmp_path / "inputs.npy", x)
    with Worker("jax", threads=1, log_path=str(tmp_path / "jax.log")) as w:
        hello = w.call("hello")
        assert hello["framework"] == "jax" and hello["devices"]["cpu"] and hello["threads"] == 1
        with pytest.raises(WorkerError, match="jax worker: unknown op 'fly'"):
            w.call("fly")
        prep = w.call("prepare", key="k", model_path=tiny_saved, inputs=str(tmp_path / "inputs.npy"),
                      runtime="xla", device="cpu", dtype="float32", batch=2, warmup=1,
                      output=str(tmp_path / "out.npy"))
        assert prep["compile_s"] > 0 and prep["output_shape"] == [2, 10]
        assert prep["runtime_mem_mb"] is None or prep["runtime_mem_mb"] > 0
        import hobs_jax

        model, variables, _ = hobs_jax.load(tiny_saved)
        ref = np.asarray(model.apply(variables, x, train=False))
        assert bench.relative_error(np.load(tmp_path / "out.npy"), ref) < 1e-5
        ms = w.call("time", key="k", n=3, warm=1)["ms"]
        assert len(ms) == 3 and all(t > 0 for t in ms)
        cpu_ms = w.call("time", key="k", n=2, warm=0, clock="cpu")["ms"]
        assert len(cpu_ms) == 2 and all(t > 0 for t in cpu_ms)
        w.call("release", key="k")
        with pytest.raises(WorkerError, match="configuration 'k' is not prepared"):
            w.call("time", key="k", n=1)
        # A failing build is one line, and the worker keeps serving.
        with pytest.raises(WorkerError, match="cannot take batch|ValueError: batch 4 exceeds the input pool of 2"):
            w.call("prepare", key="big", model_path=tiny_saved, inputs=str(tmp_path / "inputs.npy"),
                   runtime="xla", device="cpu", dtype="float32", batch=4, warmup=0,
                   output=str(tmp_path / "big.npy"))
        # A model the framework cannot take at all is flagged: its rows become skipped.
        with pytest.raises(WorkerError, match="jax cannot take this model: ValueError: no hobs_jax checkpoint") as e:
            w.call("prepare", key="m", model_path=str(tmp_path / "missing"), inputs=str(tmp_path / "inputs.npy"),
                   runtime="xla", device="cpu", dtype="float32", batch=1, warmup=0, output=str(tmp_path / "m.npy"))
        assert e.value.unsupported
        assert w.call("hello")["framework"] == "jax"
    assert w.proc.returncode == 0


def test_xla_runs_depthwise_convs_as_shift_add_on_the_cpu_with_the_same_outputs(tmp_path):
    """``fast_depthwise`` (auto: on for a CPU device) changes how XLA computes a depthwise
    conv, not the network: both forms give Flax's outputs, and the row's note says which."""
    from hobs_jax import export
    from hobs_jax.testing.init import random_linen
    from hobs_jax.testing.nets import MBConvNetTiny

    m = MBConvNetTiny()
    v = random_linen(m, (1,) + SHAPE)
    path = str(export.save(tmp_path / "mb", m, v, input_shape=(1,) + SHAPE))
    x = np.random.default_rng(0).standard_normal((2,) + SHAPE, dtype=np.float32)
    np.save(tmp_path / "inputs.npy", x)
    ref = np.asarray(m.apply(v, x))
    notes = {}
    with Worker("jax", threads=1, log_path=str(tmp_path / "jax.log")) as w:
        for mode in ("auto", "off"):
            prep = w.call("prepare", key=mode, model_path=path, inputs=str(tmp_path / "inputs.npy"),
                          runtime="xla", device="cpu", dtype="float32", batch=2, warmup=0,
                          output=str(tmp_path / f"{mode}.npy"), fast_depthwise=mode)
            notes[mode] = prep["note"]
            assert bench.relative_error(np.load(tmp_path / f"{mode}.npy"), ref) < 1e-5, mode
    assert notes["auto"].endswith("; depthwise as shift-add") and "shift-add" not in notes["off"]
    with pytest.raises(ValueError, match=r"fast_depthwise='fast': use one of \('auto', 'on', 'off'\)"):
        Options(fast_depthwise="fast").validate()
    from hobs_jax.models.depthwise import MODES

    assert bench.runtimes.DEPTHWISE_MODES == MODES


# -- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
def test_suite_end_to_end_writes_csv_json_summary_plots(tiny_saved, tmp_path):
    out = tmp_path / "out"
    models = [ModelSpec.from_saved(tiny_saved, label="dense", input_shape=SHAPE),
              ModelSpec.from_zoo("resnet20", label="half", widths={k: max(1, v // 2) for k, v in TINY.items()},
                                 in_channels=1, input_shape=SHAPE)]
    res = run_suite(models, ["xla", "onnxruntime", "torch"], QUICK, out_dir=str(out), baseline="dense", log=None)
    assert len(res.rows) == 2 * 3 * 2 and all(r["status"] == "ok" for r in res.rows), \
        [(r["runtime"], r["reason"]) for r in res.rows if r["status"] != "ok"]
    for r in res.rows:
        assert r["verify_rel_err"] < 1e-5 and r["verify_tol"] == 1e-5
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["samples"] == 2
        assert r["compile_s"] > 0 and r["throughput_ips"] == pytest.approx(r["batch"] * 1e3 / r["p50_ms"])
        assert r["peak_rss_mb"] is None or r["peak_rss_mb"] > 0
    with open(out / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == list(bench.COLUMNS)
    back = bench.read_csv(str(out / "results.csv"))
    assert [r["p50_ms"] for r in back] == pytest.approx([r["p50_ms"] for r in res.rows])
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == bench.SCHEMA and len(data["rows"]) == 12
    assert data["meta"]["machine"]["cpu"]["isa"] and data["meta"]["options"]["rounds"] == 2
    assert {m["label"] for m in data["models"]} == {"dense", "half"}
    assert data["models"][1]["macs"] < data["models"][0]["macs"]
    md = (out / "summary.md").read_text()
    assert "JAX vs PyTorch" in md and "Speedup over dense" in md and "## half" in md
    for name in ("latency", "throughput", "memory", "compile"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert not (out / "logs").exists() or all(p.stat().st_size > 0 for p in (out / "logs").iterdir())


@pytest.mark.slow
def test_verify_refuses_a_wrong_network_before_timing(tiny_saved, tmp_path):
    from hobs_jax import export

    other, other_vars = _save_tiny(tmp_path / "other", seed=1)
    wrong = export.to_onnx(other, other_vars, str(tmp_path / "wrong.onnx"), input_shape=(1,) + SHAPE)
    spec = ModelSpec.from_saved(tiny_saved, label="tiny", input_shape=SHAPE, onnx=wrong)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"verify: tiny in onnxruntime \(cpu, float32, batch 1\) disagrees "
                                         r"with Flax: max\|diff\|/max\|ref\| = .* > 1e-05; nothing was timed") as e:
        run_suite([spec], ["onnxruntime"], QUICK, out_dir=str(out), log=None)
    assert "\n" not in str(e.value) and "(1 more configurations disagree)" in str(e.value)
    assert not out.exists()
    # --no-verify times it anyway and records the disagreement.
    res = run_suite([spec], ["onnxruntime"], Options(batch_sizes=(1,), iters=1, rounds=1, warmup=0,
                                                     devices=("cpu",), verify=False), log=None)
    assert res.rows[0]["status"] == "ok" and res.rows[0]["verify_rel_err"] > 1e-2


def test_cli_bad_runtime_and_batch_are_one_line_errors(tmp_path):
    for args, msg in ((["--runtimes", "xla,tensorflow"], "error: unknown runtime 'tensorflow'; known: "
                                                         "xla, onnxruntime, torch, torch-compile, tensorrt"),
                      (["--batch-sizes", "1,x"], "error: --batch-sizes '1,x': comma-separated positive ints")):
        p = subprocess.run([sys.executable, "-m", "hobs_jax.bench", "--model", "resnet20", "--out",
                            str(tmp_path / "o")] + args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == msg
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not sysinfo.has_gpu(), reason="needs a GPU")
def test_gpu_rows_run_and_verify(tiny_saved, tmp_path):
    res = run_suite([ModelSpec.from_saved(tiny_saved, input_shape=SHAPE)], None,
                    Options(batch_sizes=(1, 8), warmup=1, iters=2, rounds=2, devices=("gpu",)), log=None)
    by = {(r["runtime"], r["dtype"]): r for r in res.rows if r["batch"] == 8}
    assert by[("xla", "float32")]["status"] == "ok" and by[("xla", "bfloat16")]["status"] == "ok"
    for r in res.rows:
        if r["status"] == "ok":
            assert r["verify_rel_err"] <= r["verify_tol"]
        else:
            assert r["reason"] and "\n" not in r["reason"]


def test_parent_side_imports_no_framework():
    code = ("import sys, hobs_jax.bench, hobs_jax.bench.__main__, hobs_jax.allocation.alignment, "
            "hobs_jax.pipeline.benchmark_stage; "
            "bad = [m for m in ('torch', 'onnxruntime', 'parity', 'tensorrt') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr[-500:]
