"""Pallas / Triton kernels: interpret mode on CPU, cross-platform lowering checks
(CUDA and TPU lowering run on this CPU-only machine), Triton compilation to a
Hopper cubin, and GPU-only numerical tests (``@pytest.mark.gpu``)."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import BlockELL, KernelConfig, bell_matmul, bell_matmul_parts, reference_matmul
from kernels.operands import dx_operands, forward_operands, masked_values
from kernels.pallas_mosaic import mosaic_gather_spmm
from kernels.pallas_spmm import pallas_gather_spmm
from kernels.pallas_tpu import tpu_gather_spmm
from tests.block_ell_testing import on_gpu, random_bell


def _ops(w, dtype=jnp.float32, transpose=False):
    v = masked_values(w.values, w.col_idx).astype(dtype)
    return dx_operands(v, w.col_idx) if transpose else forward_operands(v, w.col_idx, w.meta)


@pytest.mark.parametrize("kernel", ["portable", "tpu"])
@pytest.mark.parametrize("transpose", [False, True], ids=["fwd", "dx"])
def test_interpret_kernels_match_dense(kernel, transpose):
    w = random_bell(48, 64, 16, 2, slots=3, empty_rows=(1,), seed=2)
    dense = np.asarray(w.todense())
    a = dense.T if transpose else dense
    x = jnp.asarray(np.random.default_rng(0).standard_normal((40, a.shape[0])), jnp.float32)
    ops = _ops(w, transpose=transpose)
    hi = jax.lax.Precision.HIGHEST  # on a GPU the interpreter's f32 dots would be TF32
    if kernel == "portable":
        y = pallas_gather_spmm(x, ops, block_m=16, interpret=True, precision=hi)
    else:
        y = tpu_gather_spmm(x, ops, block_m=16, interpret=True, precision=hi)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose,precomputed", [(False, False), (False, True),
                                                    (True, False)],
                         ids=["fwd", "fwd-static-index", "dx"])
def test_operands_without_zero_block_never_read_padding(transpose, precomputed):
    """zero_block=False (the GPU kernels' operands): values unmasked, NaN in every
    padding slot; a kernel that stops at cnt must still match the dense product.
    (The static ForwardIndex is forward-only.)"""
    from kernels.operands import forward_index

    w = random_bell(48, 64, 16, 2, slots=3, empty_rows=(1,), seed=4)
    pad = np.asarray(w.col_idx) < 0
    assert pad.any()
    values = jnp.where(jnp.asarray(pad)[:, :, None, None], jnp.nan, w.values)
    if transpose:
        ops = dx_operands(values, w.col_idx, zero_block=False)
    else:
        index = forward_index(np.asarray(w.col_idx), w.meta) if precomputed else None
        ops = forward_operands(values, w.col_idx, w.meta, zero_block=False, index=index)
    assert ops.blocks.shape[0] == w.values.shape[0] * w.values.shape[1]  # no copy, no zero block
    dense = np.asarray(w.todense())
    a = dense.T if transpose else dense
    x = jnp.asarray(np.random.default_rng(1).standard_normal((40, a.shape[0])), jnp.float32)
    y = pallas_gather_spmm(x, ops, block_m=16, interpret=True,
                           precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ a, rtol=1e-5, atol=1e-5)


def test_precomputed_index_matches_and_rejects_a_wrong_shape():
    from kernels.operands import ForwardIndex, forward_index

    w = random_bell(64, 96, 16, 2, slots=3, empty_rows=(2,), seed=5)
    index = forward_index(np.asarray(w.col_idx), w.meta)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((24, 64)), jnp.float32)
    cfg = KernelConfig("pallas_interpret", block_m=8)
    np.testing.assert_allclose(
        np.asarray(bell_matmul_parts(x, w.values, w.col_idx, w.meta, config=cfg, index=index)),
        np.asarray(bell_matmul_parts(x, w.values, w.col_idx, w.meta, config=cfg)), rtol=1e-6)
    bad = ForwardIndex(index.idx[:, :1], index.pos[:, :1], index.cnt)
    with pytest.raises(ValueError, match="index must be a ForwardIndex"):
        bell_matmul_parts(x, w.values, w.col_idx, w.meta, config=cfg, index=bad)


def test_operands_padding_points_at_zero_block():
    w = random_bell(32, 32, 8, 1, slots=2, empty_rows=(3,))
    for ops in (_ops(w), _ops(w, transpose=True)):
        nb = ops.blocks.shape[0] - 1
        assert np.all(np.asarray(ops.blocks[nb]) == 0)
        t = np.arange(ops.idx.shape[1])[None, :]
        pad = t >= np.asarray(ops.cnt)[:, None]
        assert np.all(np.asarray(ops.pos)[pad] == nb)
        assert np.all(np.asarray(ops.pos)[~pad] < nb)


def _lowers(fn, args, platform):
    """Lowers ``fn`` for ``platform`` without that device (JAX cross-lowering)."""
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("block", [16, 64, 128])
def test_mosaic_gpu_kernel_lowers_for_cuda(block):
    w = random_bell(256, 256, block, 1)
    x = jnp.zeros((128, 256), jnp.bfloat16)
    text = _lowers(functools.partial(mosaic_gather_spmm, block_m=128, num_sms=132),
                   (x, _ops(w, jnp.bfloat16)), "cuda")
    assert "mosaic_gpu" in text


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_triton_lowering_for_cuda(dtype):
    w = random_bell(128, 128, 32, 2)
    x = jnp.zeros((64, 128), dtype)
    text = _lowers(functools.partial(pallas_gather_spmm, block_m=32), (x, _ops(w, dtype)), "cuda")
    assert "triton" in text


def test_tpu_kernel_lowers_for_tpu():
    w = random_bell(256, 256, 128, 1)
    x = jnp.zeros((128, 256), jnp.bfloat16)
    text = _lowers(functools.partial(tpu_gather_spmm, block_m=128),
                   (x, _ops(w, jnp.bfloat16)), "tpu")
    assert "tpu_custom_call" in text


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("dtype,ieee", [("bf16", False), ("fp32", True)])
def test_jax_triton_kernel_compiles_to_hopper_cubin(dtype, ieee):
    triton = pytest.importorskip("triton")
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton_spmm import build_triton_kernel

    kernel = build_triton_kernel()
    names = list(kernel.arg_names)
    sig = {n: "*i32" for n in names[:3]}
    sig.update({n: f"*{dtype}" for n in names[3:6]})
    consts = {"K": 512, "NOUT": 256, "T": 3, "BLOCK_M": 64, "B": 64, "IEEE": ieee}
    sig.update({n: "constexpr" for n in consts})
    src = ASTSource(kernel, sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    # The cubin needs NVIDIA's ptxas (bundled with triton's CUDA backend or named by
    # TRITON_PTXAS_PATH): without it the target is unavailable and the test skips. Once ptxas
    # is there, any compilation error is the kernel's fault and fails the test.
    try:
        _ = knobs.nvidia.ptxas  # raises RuntimeError when no ptxas can be found
    except RuntimeError as err:
        pytest.skip(f"no ptxas for sm_90 in this triton install: {err}")
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    ptx = compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    # bf16 goes to tensor cores (wgmma/mma); IEEE fp32 to FMA loops.
    assert ("mma" in ptx) if not ieee else ("fma.rn.f32" in ptx and "mma" not in ptx)


# ------------------------------------------------------------- GPU only
GPU_BACKENDS = ["pallas_triton", "pallas_mosaic", "triton"]


def _gpu_case(dtype, block=64, m=200):
    w = random_bell(512, 384, block, 2, slots=3, empty_rows=(2,), seed=9)
    w = BlockELL(w.values.astype(dtype), w.col_idx, w.meta)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((m, 512)), dtype)
    return x, w


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gpu_backends_match_reference(backend, dtype):
    from kernels.config import available_backends

    if backend not in available_backends("gpu", dtype, 64):
        pytest.skip(f"{backend} not available for {jnp.dtype(dtype).name} on this GPU")
    x, w = _gpu_case(dtype)
    y = bell_matmul(x, w, config=KernelConfig(backend, block_m=64 if backend != "pallas_mosaic"
                                              else 128),
                    precision=jax.lax.Precision.HIGHEST)
    ref = reference_matmul(x.astype(jnp.float32), w.values.astype(jnp.float32), w.col_idx,
                           w.meta, precision=jax.lax.Precision.HIGHEST)
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), np.asarray(ref),
                               rtol=tol, atol=tol * float(jnp.abs(ref).max()))


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_gradients(backend):
    from kernels.config import available_backends

    if backend not in available_backends("gpu", jnp.bfloat16, 64):
        pytest.skip(f"{backend} not available on this GPU")
    x, w = _gpu_case(jnp.bfloat16, m=128)
    f = lambda a, v: jnp.sum(bell_matmul_parts(a, v, w.col_idx, w.meta,
                                               config=KernelConfig(backend, block_m=128))
                             .astype(jnp.float32) ** 2)
    r = lambda a, v: jnp.sum(reference_matmul(a, v, w.col_idx, w.meta)
                             .astype(jnp.float32) ** 2)
    g = jax.grad(f, argnums=(0, 1))(x, w.values)
    gr = jax.grad(r, argnums=(0, 1))(x, w.values)
    for a, b in zip(g, gr):
        a, b = np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32))
        np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2 * np.abs(b).max())
