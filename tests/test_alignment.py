"""Width alignment: the quantum read off a latency staircase, the pure lookup, the cache,
and a small real measurement in XLA and ONNX Runtime (no timed assertions)."""

import math

import numpy as np
import pytest

from hobs_jax.allocation import alignment

W = tuple(range(1, 65))


def test_pick_quantum_finds_the_step_of_a_staircase():
    for q in (4, 8, 16):
        stairs = [2.0 + math.ceil(w / q) for w in W]
        assert alignment.pick_quantum(W, stairs) == q
    # Noise of a few percent does not hide a step of 8.
    rng = np.random.default_rng(0)
    noisy = [(2.0 + math.ceil(w / 8)) * (1 + 0.02 * rng.standard_normal()) for w in W]
    assert alignment.pick_quantum(W, noisy) == 8


def test_pick_quantum_of_fallback_kernels_and_of_no_staircase():
    # Unaligned widths much slower than the next multiple of 8 (a generic-kernel fallback).
    fallback = [1.0 + w / 8 + (0 if w % 8 == 0 else 3.0) for w in W]
    assert alignment.pick_quantum(W, fallback) == 8
    assert alignment.pick_quantum(W, [1.0 + 0.1 * w for w in W]) == 1  # linear: no step
    assert alignment.pick_quantum(W, [1.0 + 1e-4 * w for w in W]) == 1  # flat: width does not matter
    with pytest.raises(ValueError, match="strictly increasing"):
        alignment.pick_quantum((1, 3, 2, 4), (1, 2, 3, 4))


def test_quantum_for_is_pure_with_fallbacks_and_one_line_errors():
    for rt in alignment.RUNTIMES:
        for dev in ("cpu-avx512", "cpu-avx2", "cpu", "gpu", "cpu-neon"):
            q = alignment.quantum_for(rt, dev)
            assert q >= 1 and q == alignment.quantum_for(rt, dev)
    with pytest.raises(ValueError, match="unknown runtime 'tvm'; known: xla, onnxruntime"):
        alignment.quantum_for("tvm", "cpu")
    with pytest.raises(ValueError, match="unknown device class 'tpu'"):
        alignment.quantum_for("xla", "tpu")
    assert alignment.device_class(["avx2", "avx512f"]) == "cpu-avx512"
    assert alignment.device_class(["avx2"]) == "cpu-avx2"
    assert alignment.device_class([], gpu_name="NVIDIA H100") == "gpu"


def test_runtime_names_match_the_bench_registry():
    from hobs_jax.bench import RUNTIMES

    assert tuple(RUNTIMES) == alignment.RUNTIMES


def _stairs(q, kind="conv3x3", base=2.0):
    return alignment.Staircase("xla", "cpu-avx512", alignment.Layer(kind, 8), W,
                               tuple(base + math.ceil(w / q) for w in W))


def test_combined_quantum_is_the_majority_of_the_width_bound_layers(tmp_path):
    s8, s16 = _stairs(8), _stairs(16, "conv1x1")
    assert alignment.width_bound(s8) and alignment.combined_quantum([s8, s8, s16]) == 8
    assert alignment.combined_quantum([s8, s16]) == 8  # 16 divides only one of two
    assert alignment.combined_quantum([s16, s16, s8]) == 16
    # A layer dominated by its fixed cost does not vote (unless nothing else does).
    fixed32 = _stairs(32, "dense", base=100.0)
    assert not alignment.width_bound(fixed32)
    assert alignment.combined_quantum([s8, fixed32]) == 8
    assert alignment.combined_quantum([fixed32]) == 1  # a rise of 1%: flat, width does not matter
    path = alignment.save_staircases([s8, s16, s16], "my cpu (cpu-avx512, 2 cores)", str(tmp_path))
    assert path.endswith(".json")
    assert alignment.cached_quantum("xla", "cpu-avx512", "my cpu (cpu-avx512, 2 cores)", str(tmp_path)) == \
        (16, "measured here")
    # Another device, or a runtime not measured: the pure default.
    assert alignment.cached_quantum("xla", "cpu-avx2", "other cpu", str(tmp_path)) == \
        (alignment.quantum_for("xla", "cpu-avx2"), "default for cpu-avx2")
    assert alignment.cached_quantum("onnxruntime", "cpu-avx512", "my cpu (cpu-avx512, 2 cores)",
                                    str(tmp_path))[1] == "default for cpu-avx512"
    assert alignment.Staircase.from_dict(s8.to_dict()) == s8


@pytest.mark.parametrize("runtime", ["xla", "onnxruntime"])
def test_measure_staircase_times_every_width(runtime):
    layer = alignment.Layer("conv3x3", cin=4, spatial=6, batch=1)
    s = alignment.measure_staircase(runtime, layer, (1, 2, 3, 4, 8), rounds=2, iters=2)
    assert s.widths == (1, 2, 3, 4, 8) and len(s.ms) == 5 and all(t > 0 for t in s.ms)
    assert s.device == alignment.device_class()
    d = alignment.measure_staircase(runtime, alignment.Layer("dense", cin=8, batch=2), (2, 4, 6), rounds=1, iters=1)
    assert len(d.ms) == 3
    with pytest.raises(ValueError, match="widths must be increasing positive ints"):
        alignment.measure_staircase(runtime, layer, (4, 2))
    with pytest.raises(ValueError, match="layer kind 'conv5x5'"):
        alignment.Layer("conv5x5", 4)
