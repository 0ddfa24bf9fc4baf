"""A tiny Flax CNN with BatchNorm and dropout following the zoo's calling contract."""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class TinyCNN(nn.Module):
    """conv3x3(w)-BN-ReLU -> conv3x3/2(2w)-BN-ReLU -> global mean -> dropout -> dense.

    Input [B, H, W, C] float; output logits [B, num_classes].
    """

    num_classes: int = 10
    width: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, (features, stride) in enumerate([(self.width, 1), (2 * self.width, 2)]):
            x = nn.Conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
                        name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name=f"bn{i}")(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)


class TinyMLP(nn.Module):
    """No BatchNorm (like a ViT: variables have no 'batch_stats')."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(self.num_classes)(x)


def init_tiny(model: nn.Module, image_shape=(16, 16, 1), seed: int = 0) -> dict:
    """Variables of ``model`` for inputs [1, *image_shape], initialized with numpy.

    Shapes come from ``jax.eval_shape(model.init)`` (nothing compiled); kernels are
    LeCun-normal, biases and BN shifts 0, BN scales and variances 1. XLA:CPU takes ~1-6 s
    to compile flax's own initializers (threefry, erf_inv), which every test and every
    process of a multi-process test would pay.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, *image_shape)), train=False))
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, shapes)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_CACHE = os.environ.get("HOBS_TEST_COMPILE_CACHE",
                               os.path.join(REPO_ROOT, ".cache", "jax-compile"))
_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def enable_compile_cache() -> None:
    """Shares XLA executables between tests and their subprocesses (persistent cache).

    XLA:CPU needs ~1 s to compile even the tiny CNN's init (threefry/erf_inv); every
    subprocess test would pay it again without the cache.
    """
    from hobs_jax import compile_cache

    compile_cache.enable(COMPILE_CACHE)


def subprocess_env(**extra: str) -> dict:
    """Environment for a subprocess test: repo on PYTHONPATH, compile cache, no TTY bars."""
    env = dict(os.environ)
    env.update(_CACHE_ENV)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env
