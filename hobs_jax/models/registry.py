"""The model registry: every zoo model by its torchvision name.

One dict plus a ``register`` decorator; configs, the graph CLI, the parity CLI and the
benchmarks all find models here by the same names (``resnet50``, ``mobilenet_v2``,
``vit_b_16``, ``resnet20``, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.models import sparse
from hobs_jax.models.widths import Widths, resolve_widths


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """How to build one zoo model.

    Attributes:
      name: registry name (torchvision's spelling).
      family: "resnet", "cifar_resnet", "mobilenet_v2", "efficientnet", "vit".
      default_widths: the published widths.
      factory: ``factory(widths, num_classes, in_channels, **kw) -> nn.Module``.
      input_size: default square input side (224 for ImageNet, 32 for CIFAR nets).
      num_classes: default number of classes.
    """

    name: str
    family: str
    default_widths: Callable[[], dict[str, int]]
    factory: Callable[..., nn.Module]
    input_size: int
    num_classes: int
    in_channels: int = 3


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to :data:`MODELS` (names are unique)."""
    if entry.name in MODELS:
        raise ValueError(f"model {entry.name!r} is already registered")
    MODELS[entry.name] = entry
    return entry


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a one-line error lists the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def list_models() -> list[str]:
    return sorted(MODELS)


def default_widths(name: str) -> dict[str, int]:
    """The published widths of ``name`` as a plain dict (a fresh copy)."""
    return dict(get_entry(name).default_widths())


def build(name: str, *, widths: Mapping[str, int] | None = None, num_classes: int | None = None,
          in_channels: int | None = None, **kwargs) -> nn.Module:
    """Build zoo model ``name``, optionally at other ``widths`` (a partial mapping of
    entry -> channels; the rest keep their defaults).

    ``block_ell`` (a mapping layer path -> :class:`hobs_jax.models.sparse.BlockPattern`)
    builds those layers as Block-ELL; it is checked against the model (shape-only) and a
    bad entry raises a one-line ``ValueError`` naming the path.

    Returns an unbound Flax module; ``init``/``apply`` with NHWC inputs.
    """
    entry = get_entry(name)
    w: Widths = resolve_widths(name, entry.default_widths(), widths)
    nc = entry.num_classes if num_classes is None else num_classes
    ic = entry.in_channels if in_channels is None else in_channels
    for key, val in (("num_classes", nc), ("in_channels", ic)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}: {key} must be a positive int, got {val!r}")
    if "block_ell" in kwargs:
        kwargs["block_ell"] = sparse.as_spec(kwargs["block_ell"])
    model = entry.factory(w, nc, ic, **kwargs)
    if kwargs.get("block_ell"):
        sparse.check_block_ell(model, input_shape(name, 1, in_channels=ic,
                                                  size=getattr(model, "image_size", None)))
    return model


def input_shape(name: str, batch: int = 1, *, in_channels: int | None = None,
                size: int | None = None) -> tuple[int, int, int, int]:
    """Default NHWC input shape of model ``name``."""
    e = get_entry(name)
    s = e.input_size if size is None else size
    return (batch, s, s, e.in_channels if in_channels is None else in_channels)


def init(model: nn.Module, rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> dict:
    """``model.init`` on zeros of ``shape`` in eval mode, without the ``intermediates``
    collection that stage-sowing would otherwise leave in the variables."""
    def _init(rng):
        variables = model.init(rng, jnp.zeros(shape, dtype), train=False)
        return {k: v for k, v in variables.items() if k != "intermediates"}

    return jax.jit(_init)(rng)  # one compilation instead of op-by-op dispatch


def primes_from(start: int, count: int) -> list[int]:
    """The first ``count`` primes >= ``start``: probe widths that tell axes apart (each width
    entry set to its own prime, a variable's shape says which entries size it; products of
    distinct primes do not collide). Used by the zoo's width axes, the cost models'
    monomial search and the rebuild probe of modules outside the zoo."""
    out: list[int] = []
    n = start
    while len(out) < count:
        if n > 1 and all(n % p for p in range(2, int(n ** 0.5) + 1)):
            out.append(n)
        n += 1
    return out


@functools.cache
def width_axes(name: str) -> dict[str, tuple[tuple[str, tuple[str, ...], int], ...]]:
    """Which variable axes each width entry sizes: ``entry -> ((collection, path, axis), ...)``.

    Found without any per-architecture table: the model is shape-evaluated once with every
    entry (and the pseudo-entries ``@num_classes`` and ``@in_channels``) set to a distinct
    prime above every spatial, kernel and sequence size, so each axis' size names its entry.
    """
    entry = get_entry(name)
    keys = list(entry.default_widths())
    primes = primes_from(211, len(keys) + 2)
    probe = dict(zip(keys, primes))
    nc, ic = primes[-2], primes[-1]
    model = build(name, widths=probe, num_classes=nc, in_channels=ic)
    shapes = jax.eval_shape(lambda: init(model, jax.random.key(0), input_shape(name, 1, in_channels=ic)))
    by_size = {p: k for k, p in probe.items()}
    by_size[nc], by_size[ic] = "@num_classes", "@in_channels"
    found: dict[str, list] = {k: [] for k in list(probe) + ["@num_classes", "@in_channels"]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = tuple(str(getattr(p, "key", p)) for p in path)
        for axis, size in enumerate(leaf.shape):
            if size in by_size:
                found[by_size[size]].append((names[0], names[1:], axis))
    return {k: tuple(v) for k, v in found.items()}


def infer_widths(name: str, variables: Mapping) -> tuple[dict[str, int], int, int]:
    """Read (widths, num_classes, in_channels) off a variables pytree of zoo model ``name``.

    Every axis an entry sizes must agree; a disagreement raises a one-line error naming
    the entry and the two variable paths.
    """
    flat = {tuple(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
    out: dict[str, int] = {}
    for key, axes in width_axes(name).items():
        sizes = []
        for col, path, axis in axes:
            leaf = flat.get((col,) + path)
            if leaf is None:
                raise ValueError(f"{name}: variables lack {col}/{'/'.join(path)} (needed for width {key!r})")
            sizes.append((leaf.shape[axis], "/".join((col,) + path)))
        if len({s for s, _ in sizes}) != 1:
            a, b = sizes[0], next(s for s in sizes if s[0] != sizes[0][0])
            raise ValueError(f"{name}: width {key!r} is {a[0]} at {a[1]} but {b[0]} at {b[1]}")
        out[key] = sizes[0][0]
    nc, ic = out.pop("@num_classes"), out.pop("@in_channels")
    return out, nc, ic


def random_variables(model: nn.Module, shape: tuple[int, ...], seed: int = 0,
                     dtype=np.float32) -> dict:
    """Random variables of ``model`` made with numpy, without compiling an initializer.

    For tests and benchmarks, where XLA's compile of a deep network's ``init`` (about
    12 s for ResNet-56 on 2 CPU cores, mostly threefry) dominates. Values:
    :func:`fill_random`. Use :func:`init` to train from scratch.
    """
    abstract = jax.eval_shape(lambda: init(model, jax.random.key(0), shape))
    return fill_random(abstract, seed, dtype)


def fill_random(abstract, seed: int = 0, dtype=None) -> dict:
    """Numpy values for a tree of abstract variables (``jax.ShapeDtypeStruct`` leaves,
    e.g. from ``jax.eval_shape`` of an ``init``), in tree order from one
    ``RandomState(seed)``: kernels and embeddings N(0, 1/fan_in) with fan_in = every axis
    but the last (attention q/k/v [D, heads, dim]: the leading axis; its output
    [heads, dim, D]: the first two); other parameters N(0, 0.1^2) around their usual
    value (1 for scales); BN means N(0, 0.1^2) and variances U(0.5, 1.5). ``dtype``:
    every leaf's, or None for each leaf's own."""
    rng = np.random.RandomState(seed)

    def make(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        s = tuple(leaf.shape)
        dt = np.dtype(leaf.dtype if dtype is None else dtype)
        if names[-1] in ("kernel", "embedding") and len(s) >= 2:
            if len(s) == 3:
                fan_in = s[0] * s[1] if names[-2] == "out" else s[0]
            else:
                fan_in = int(np.prod(s[:-1]))
            return rng.normal(0.0, 1.0 / np.sqrt(fan_in), s).astype(dt)
        if names[0] == "batch_stats":
            if names[-1] == "var":
                return rng.uniform(0.5, 1.5, s).astype(dt)
            return rng.normal(0.0, 0.1, s).astype(dt)
        base = 1.0 if names[-1] == "scale" else 0.0
        return (base + rng.normal(0.0, 0.1, s)).astype(dt)

    return jax.tree_util.tree_map_with_path(make, abstract)
