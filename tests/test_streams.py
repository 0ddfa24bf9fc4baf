"""Concurrent calibration streams (hobs_jax.stats.streams) and the persistent compile
cache switch (hobs_jax.compile_cache): order, bounded work, errors, and results that do
not depend on the number of workers."""

import threading
import time

import jax
import numpy as np
import pytest

from hobs_jax import compile_cache
from hobs_jax.stats import collect_hessians, reestimate_bn
from hobs_jax.stats.streams import default_workers, ordered_map, resolve_workers


class _Probe:
    """fn for ordered_map: sleeps a little (later items shorter, so they finish first),
    records the most items running at once and how many were consumed."""

    def __init__(self):
        self.lock, self.running, self.most, self.consumed = threading.Lock(), 0, 0, 0

    def items(self, n):
        for i in range(n):
            self.consumed += 1
            yield i

    def __call__(self, i):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02 * (1 + (7 - i) % 3))
        with self.lock:
            self.running -= 1
        if i == 5:
            raise RuntimeError("item 5 failed")
        return i * i


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ordered_map_order_bound_and_error(workers):
    probe = _Probe()
    it = ordered_map(probe, probe.items(8), workers)
    got = [next(it) for _ in range(5)]
    assert got == [0, 1, 4, 9, 16]  # item order, whatever finished first
    assert probe.consumed <= 5 + workers  # lazy: at most `workers` ahead of the consumer
    with pytest.raises(RuntimeError, match="item 5 failed"):
        next(it)
    assert probe.most == workers  # the first item alone, then `workers` at once


def test_workers_are_checked():
    assert resolve_workers(None) == default_workers() == (2 if jax.default_backend() == "cpu" else 1)
    assert default_workers("gpu") == 1 and default_workers("cpu") == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers="):
            resolve_workers(bad)


def test_calibration_and_bn_do_not_depend_on_workers():
    """Sums in batch order: two workers give the sequential loop's bits exactly."""
    from tests._tiny import init_tiny
    from tests.test_hobs_hessian import SHAPE, Net

    model = Net()
    v = init_tiny(model, SHAPE[1:], seed=1)
    x = np.random.default_rng(3).normal(size=(11,) + SHAPE[1:]).astype(np.float32)
    one = collect_hessians(model, v, x, batch_size=3, progress=False, workers=1)  # 3+3+3+2 (padded)
    two = collect_hessians(model, v, x, batch_size=3, progress=False, workers=2)
    assert one.layers.keys() == two.layers.keys()
    for p in one.layers:
        np.testing.assert_array_equal(one[p].xtx, two[p].xtx)
        assert one[p].count == two[p].count
    with pytest.raises(ValueError, match="workers="):
        collect_hessians(model, v, x, progress=False, workers=0)

    from hobs_jax import models

    widths = {k: 4 for k in models.default_widths("resnet20")}
    bn_model = models.build("resnet20", widths=widths, num_classes=10, in_channels=1)
    bv = models.random_variables(bn_model, (1, 8, 8, 1), seed=2)
    imgs = np.random.default_rng(4).normal(size=(10, 8, 8, 1)).astype(np.float32)
    batches = [imgs[:4], imgs[4:8], imgs[8:]]
    a = reestimate_bn(bn_model, bv, batches, workers=1)
    b = reestimate_bn(bn_model, bv, iter(batches), workers=2)  # a generator is fine
    for s, t in zip(jax.tree.leaves(a["batch_stats"]), jax.tree.leaves(b["batch_stats"])):
        np.testing.assert_array_equal(s, t)
    assert not all(np.array_equal(s, t) for s, t in zip(jax.tree.leaves(a["batch_stats"]),
                                                          jax.tree.leaves(bv["batch_stats"])))


def test_compile_cache_switch(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: calls.__setitem__(k, v))
    assert compile_cache.enable("") is None and compile_cache.enable(None) is None and not calls
    d = tmp_path / "a" / "b"
    assert compile_cache.enable(str(d)) == str(d) and d.is_dir()
    assert calls == {"jax_compilation_cache_dir": str(d), "jax_persistent_cache_min_compile_time_secs": 0,
                     "jax_persistent_cache_min_entry_size_bytes": 0}
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="cannot create the directory"):
        compile_cache.enable(str(f / "sub"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.default_dir() == str(tmp_path / "env")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == str(tmp_path / "xdg" / "hobs_jax" / "xla")


def test_bn_reestimation_runs_networks_with_dropout():
    """A network with dropout (the zoo's MobileNetV2 and EfficientNet classifiers, their
    stochastic depth) is re-estimated (it needs a dropout key in training mode); a BN before
    the dropout gets the statistics of the same network without it."""
    from tests._tiny import TinyCNN, init_tiny

    v = init_tiny(TinyCNN(dropout=0.5), (8, 8, 1), seed=5)
    imgs = np.random.default_rng(6).normal(size=(12, 8, 8, 1)).astype(np.float32)
    with_dropout = reestimate_bn(TinyCNN(dropout=0.5), v, [imgs[:6], imgs[6:]])
    without = reestimate_bn(TinyCNN(dropout=0.0), v, [imgs[:6], imgs[6:]])
    for s, t, u in zip(jax.tree.leaves(with_dropout["batch_stats"]), jax.tree.leaves(without["batch_stats"]),
                       jax.tree.leaves(v["batch_stats"])):
        np.testing.assert_array_equal(s, t)
        assert not np.array_equal(s, u)
