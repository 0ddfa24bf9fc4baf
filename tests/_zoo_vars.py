"""Random, non-trivial zoo variables without compiling Flax's initializers.

``models.init`` compiles threefry/erf_inv initializers (10-20 s per model on the 2-core
CPU); the graph tests only need shapes plus values in which every channel matters, so
variables are drawn with numpy from ``jax.eval_shape``.
"""

from __future__ import annotations

import jax
import numpy as np

from hobs_jax import models


def zoo_model(name: str, *, narrow: bool = False, num_classes: int = 7):
    """(model, input_shape at batch 2): CNNs at 32x32, the small-image forms at their 28x28x1,
    ViT-B/16 at 224x224; narrow widths
    (every width about 1/12 of the published one) when ``narrow``."""
    widths = None
    if narrow:
        widths = {k: max(2, v // 12) for k, v in models.default_widths(name).items()}
    model = models.build(name, widths=widths, num_classes=num_classes)
    entry = models.get_entry(name)
    if entry.input_size == 28:
        return model, models.input_shape(name, 2)
    size = 224 if name == "vit_b_16" else 32
    return model, models.input_shape(name, 2, size=size)


def random_variables(model, shape, seed: int = 0, dtype=np.float32) -> dict:
    """Kernels ~ N(0, 1/fan_in); biases, BN/LN shifts and running means ~ N(0, 0.1);
    scales ~ U(0.5, 1.5); running variances ~ U(0.5, 1.5); embeddings ~ N(0, 0.1)."""
    abstract = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1,) + tuple(shape[1:])))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            qkv = leaf.ndim == 3 and str(getattr(path[-2], "key", "")) in ("query", "key", "value")
            fan_in = leaf.shape[0] if qkv else int(np.prod(leaf.shape[:-1]))  # [D, h, d] vs [.., in, out]
            a = rng.normal(size=leaf.shape) / np.sqrt(max(fan_in, 1))
        elif name in ("scale", "var"):
            a = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            a = 0.1 * rng.normal(size=leaf.shape)
        return np.asarray(a, dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)
