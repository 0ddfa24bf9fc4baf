"""Autotune cache: round trip, atomic writes, corrupt cache fallback, dispatch."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    KernelConfig,
    bell_matmul,
    cache_path,
    load_cache,
    lookup,
    lookup_block,
    problem_key,
    random_balanced,
    select_config,
    store,
    tune,
    tune_block_size,
)


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "autotune.json"
    monkeypatch.setenv("HOBS_JAX_AUTOTUNE_CACHE", str(path))
    return path


def test_cache_path_from_env_and_default(cache_file, monkeypatch):
    assert cache_path() == cache_file
    monkeypatch.delenv("HOBS_JAX_AUTOTUNE_CACHE")
    assert cache_path().parts[-3:] == (".cache", "hobs_jax", "autotune.json")


def test_tune_round_trip_and_dispatch(cache_file):
    w = random_balanced(64, 48, 16, 0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((20, 64)), jnp.float32)
    configs = [KernelConfig("xla_scatter", chunk_m=8), KernelConfig("xla_gather", chunk_m=16)]
    best, timings = tune(x, w, configs=configs, iters=2)
    assert best in configs and len(timings) == 2
    assert all(np.isfinite(t) and t > 0 for t in timings.values())
    key = problem_key(20, w.meta, w.slots, jnp.float32)
    assert lookup(key) == best
    on_disk = json.loads(cache_file.read_text())
    assert on_disk["configs"][key]["config"] == best.to_dict()
    assert [p.name for p in cache_file.parent.iterdir()] == ["autotune.json"]  # no temp left
    # M in the same power-of-two bucket reuses the entry; "auto" dispatch picks it.
    assert select_config("auto", 31, w.meta, w.slots, jnp.float32) == best
    y = bell_matmul(x, w)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w.todense()), rtol=1e-5, atol=1e-5)


def test_store_merges_entries(cache_file):
    store("a", KernelConfig("xla_scatter", chunk_m=64), 1.0)
    store("b", KernelConfig("xla_gather", chunk_m=256), 2.0)
    assert lookup("a") == KernelConfig("xla_scatter", chunk_m=64)
    assert lookup("b") == KernelConfig("xla_gather", chunk_m=256)
    assert set(load_cache()["configs"]) == {"a", "b"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"version": 99, "configs": {}}',
                                     '{"version": 1, "configs": []}'])
def test_corrupt_cache_warns_and_uses_defaults(cache_file, content):
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text(content)
    w = random_balanced(32, 32, 8, 0.5)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        cfg = select_config("auto", 16, w.meta, w.slots, jnp.float32)
    assert cfg == KernelConfig("xla_scatter", chunk_m=128)  # the CPU default
    # A later store repairs the file.
    store("k", KernelConfig("xla_dense"), 1.0)
    assert lookup("k") == KernelConfig("xla_dense")


def test_invalid_entry_warns(cache_file):
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text(json.dumps({"version": 1, "configs": {
        "k": {"config": {"backend": "nope"}}}, "blocks": {}}))
    with pytest.warns(RuntimeWarning, match="entry 'k' is invalid"):
        assert lookup("k") is None


def test_unavailable_cached_backend_is_ignored(cache_file):
    w = random_balanced(32, 32, 16, 0.5)
    key = problem_key(16, w.meta, w.slots, jnp.float32)
    store(key, KernelConfig("pallas_mosaic"), 0.1)  # a GPU entry on this CPU
    assert select_config("auto", 16, w.meta, w.slots, jnp.float32).backend == "xla_scatter"


def test_failed_write_leaves_cache_intact(cache_file, monkeypatch):
    store("a", KernelConfig("xla_scatter"), 1.0)
    before = cache_file.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store("b", KernelConfig("xla_gather"), 1.0)
    assert cache_file.read_text() == before
    assert [p.name for p in cache_file.parent.iterdir()] == ["autotune.json"]


def test_tune_block_size_caches_choice(cache_file):
    best, timings = tune_block_size(32, 64, 64, 0.75, blocks=(8, 16), iters=1)
    assert best in (8, 16) and set(timings) == {8, 16}
    assert lookup_block(32, 64, 64, 0.75, jnp.float32) == best
    assert lookup_block(32, 64, 64, 0.5, jnp.float32) is None
