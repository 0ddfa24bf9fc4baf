"""bell_matmul on every CPU-runnable backend against the dense masked product:
values, gradients, dtypes, padding, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kernels import (
    BlockELL,
    BlockELLMeta,
    KernelConfig,
    bell_matmul,
    bell_matmul_parts,
    reference_matmul,
    select_config,
)
from tests.block_ell_testing import random_bell

CPU_BACKENDS = ["auto", "xla", "xla_scatter", "xla_gather", "xla_dense", "pallas_interpret"]


@pytest.fixture(autouse=True)
def _full_f32_matmuls(request):
    """These tests target the CPU backends. On a GPU machine: the interpreter is not
    offered there (skip its cases), and 'auto' picks the GPU kernels, whose f32 dots
    default to TF32, so ask for full float32 (both no-ops on CPU)."""
    from kernels.config import platform

    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if platform() != "cpu" and (params.get("backend") == "pallas_interpret"
                                or request.node.get_closest_marker("cpu_only")):
        pytest.skip(f"a CPU backend; this is {platform()}")
    with jax.default_matmul_precision("highest"):
        yield

# (M, K, N, block, keep per row, slots, empty block-rows)
CASES = [
    (16, 32, 48, 8, 2, 2, ()),           # multiples, balanced
    (10, 30, 45, 8, 3, 4, (1,)),         # non-multiple K, N; empty row; padding slot
    (33, 64, 32, 16, 1, 2, (0, 3)),      # M not a tile multiple; 90%-style sparsity
    (8, 24, 40, 8, 5, 5, ()),            # dense (every block stored)
    (5, 16, 16, 4, 0, 2, (0, 1, 2, 3)),  # every slot is padding
]


def _x(m, k, dtype=jnp.float32, seed=1, lead=()):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((*lead, m, k)), dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"m{c[0]}k{c[1]}n{c[2]}b{c[3]}")
def test_forward_matches_dense(backend, case):
    m, k, n, b, keep, slots, empty = case
    w = random_bell(k, n, b, keep, slots=slots, empty_rows=empty, seed=m)
    x = _x(m, k)
    y = bell_matmul(x, w, backend=backend)
    assert y.shape == (m, n) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ np.asarray(w.todense()),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["xla_scatter", "xla_gather", "pallas_interpret"])
def test_chunking_and_tiles(backend):
    w = random_bell(48, 40, 8, 2, slots=3, empty_rows=(2,))
    x = _x(37, 48)
    ref = np.asarray(x) @ np.asarray(w.todense())
    for cfg in (KernelConfig(backend, chunk_m=8, block_m=8),
                KernelConfig(backend, chunk_m=16, block_m=16),
                KernelConfig(backend, chunk_m=64, block_m=64)):
        y = bell_matmul(x, w, config=cfg)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch(backend):
    w = random_bell(32, 24, 8, 2)
    y = bell_matmul(jnp.zeros((2, 0, 32)), w, backend=backend)
    assert y.shape == (2, 0, 24) and y.dtype == jnp.float32


def test_leading_dims_and_jit():
    w = random_bell(32, 24, 8, 2)
    x = _x(5, 32, lead=(2, 3))
    y = jax.jit(lambda a, w: bell_matmul(a, w, backend="xla_scatter"))(x, w)
    assert y.shape == (2, 3, 5, 24)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w.todense()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["xla_scatter", "xla_gather", "pallas_interpret"])
def test_bf16_close_to_f32(backend):
    w32 = random_bell(64, 48, 16, 2, slots=3)
    x32 = _x(24, 64)
    w16 = BlockELL(w32.values.astype(jnp.bfloat16), w32.col_idx, w32.meta)
    y = bell_matmul(x32.astype(jnp.bfloat16), w16, backend=backend)
    assert y.dtype == jnp.bfloat16
    # Same bf16-rounded inputs in f32: the only error is the bf16 output rounding
    # (f32 accumulation), <= 2^-8 relative.
    ref = np.asarray(x32.astype(jnp.bfloat16).astype(jnp.float32)) @ \
        np.asarray(w16.todense().astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), ref,
                               rtol=2 ** -7, atol=2 ** -7 * np.abs(ref).max())


GRAD_BACKENDS = ["xla_scatter", "xla_gather", "xla_dense", "pallas_interpret"]


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_grads_match_dense_masked_autodiff(backend):
    w = random_bell(30, 44, 8, 2, slots=4, empty_rows=(1,), seed=4)
    x = _x(11, 30)
    dy = _x(11, 44, seed=7)

    def loss(fn):
        return lambda a, v: jnp.sum(jnp.tanh(fn(a, v)) * dy)

    ours = loss(lambda a, v: bell_matmul_parts(a, v, w.col_idx, w.meta, backend=backend))
    ref = loss(lambda a, v: reference_matmul(a, v, w.col_idx, w.meta))
    gx, gv = jax.grad(ours, argnums=(0, 1))(x, w.values)
    rx, rv = jax.grad(ref, argnums=(0, 1))(x, w.values)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gv), np.asarray(rv), rtol=1e-5, atol=1e-5)
    pad = np.asarray(w.col_idx) < 0
    assert pad.any() and np.all(np.asarray(gv)[pad] == 0)  # padding slots: zero gradient


@pytest.mark.parametrize("backend", ["xla_scatter", "pallas_interpret"])
def test_check_grads_float64(backend):
    with jax.enable_x64(True):
        w = random_bell(12, 20, 4, 2, slots=3, empty_rows=(0,), dtype=np.float64)
        x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 12)), jnp.float64)
        f = lambda a, v: bell_matmul_parts(a, v, w.col_idx, w.meta, backend=backend)
        check_grads(f, (x, w.values), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)  # raises
        gx, gv = jax.grad(lambda a, v: jnp.sum(f(a, v) ** 2), argnums=(0, 1))(x, w.values)
        assert gx.shape == x.shape and gv.shape == w.values.shape
        assert gx.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(gv)))


def test_gradient_flows_through_pytree():
    w = random_bell(16, 16, 4, 2)
    x = _x(4, 16)
    # col_idx is an int leaf: differentiate a whole BlockELL with allow_int=True
    g = jax.grad(lambda w: jnp.sum(bell_matmul(x, w, backend="xla_scatter") ** 2),
                 allow_int=True)(w)
    assert isinstance(g, BlockELL) and g.values.shape == w.values.shape
    assert g.col_idx.dtype == jax.dtypes.float0
    ref = jax.grad(lambda v: jnp.sum(reference_matmul(x, v, w.col_idx, w.meta) ** 2))(w.values)
    np.testing.assert_allclose(np.asarray(g.values), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_one_line_value_errors():
    w = random_bell(16, 8, 4, 1)
    x = _x(3, 16)
    cases = [
        (lambda: bell_matmul(x.astype(jnp.bfloat16), w), "x.dtype=bfloat16 does not match"),
        (lambda: bell_matmul(x[0], w), r"x.shape=\(16,\) must be \[..., K=16\]"),
        (lambda: bell_matmul(_x(3, 12), w), r"x.shape\[-1\]=12 must equal K=16"),
        (lambda: bell_matmul(x, w, backend="cuda"), "backend='cuda' is not one of"),
        (lambda: bell_matmul(x, w, backend="pallas_mosaic"), "backend='pallas_mosaic' is not available"),
        (lambda: bell_matmul(x, w, backend="triton"), "backend='triton' is not available"),
        (lambda: bell_matmul_parts(x, w.values[:, :, :2], w.col_idx, w.meta), "values.shape="),
        (lambda: bell_matmul_parts(x, w.values, w.col_idx[:, :0], w.meta), "col_idx.shape="),
        (lambda: bell_matmul_parts(x, w.values, w.col_idx.astype(jnp.float32), w.meta),
         "col_idx.dtype=float32"),
        (lambda: bell_matmul(x, w.todense()), "must be a BlockELL"),
        (lambda: bell_matmul(x.astype(jnp.int32), BlockELL(w.values.astype(jnp.int32), w.col_idx,
                                                           w.meta)), "x.dtype=int32 must be"),
        (lambda: KernelConfig("xla_scatter", chunk_m=0), "chunk_m=0"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            fn()
        assert "\n" not in str(info.value)


@pytest.mark.cpu_only
def test_select_config_defaults_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("HOBS_JAX_AUTOTUNE_CACHE", str(tmp_path / "none.json"))
    meta = BlockELLMeta((64, 64), 16, 2)
    assert select_config("auto", 32, meta, 2, jnp.float32).backend == "xla_scatter"
    assert select_config("xla", 32, meta, 2, jnp.float32).backend == "xla_scatter"
    assert select_config("pallas", 32, meta, 2, jnp.float32).backend == "pallas_interpret"
