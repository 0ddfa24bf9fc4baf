"""Block-ELL layers: 1x1 convolutions and dense layers whose weight is a balanced
Block-ELL matrix (``kernels.bell_matmul_parts``), standalone or inside the zoo.

What a Block-ELL layer holds
----------------------------
W [K, N] (a Dense kernel, or a 1x1 conv kernel [1, 1, K, N] squeezed) is stored as

* ``params/<layer>/bell_values`` [R, S, b, b]: the kept blocks, trainable (gradients
  reach them through the kernels' custom VJP; dropped blocks do not exist, so an
  optimizer can never revive them), ``params/<layer>/bias`` [N] where the dense layer
  had one;
* the pattern, a :class:`BlockPattern` (``col_idx`` [R, S] int32 and the static
  ``BlockELLMeta``), in the *module configuration*, not in the variables.

Why the pattern is static configuration and not a variable collection
---------------------------------------------------------------------
``meta.col_slots`` (the busiest block-column, the width of the transposed index the
GPU/TPU kernels iterate over) is a compile-time constant that is a function of
``col_idx``. Keeping ``col_idx`` next to it in one hashable object gives the pattern a
single source of truth: a ``col_idx`` in a variable collection could be swapped for
another one whose column counts exceed the compiled ``col_slots`` and the gather kernels
would silently drop blocks. Static config also means the variables stay
``{'params', 'batch_stats'}``: ``hobs_jax.train.fit`` (which keeps only those two
collections), optimizers, checkpoints and FSDP sharding work unchanged, and XLA sees
the index as a constant (the transposed index is folded at compile time). The price:
variables alone no longer describe a sparse model, exactly as they do not carry
``num_classes`` or ``image_size``; the model (``models.build(name, widths=...,
block_ell=spec)``) does, and the spec is plain data (:func:`spec_to_dict` /
:func:`spec_from_dict`, JSON-ready) saved beside the variables. Changing a pattern
recompiles, which a Block-ELL layer needs anyway when its slot count S changes.

How the zoo finds its Block-ELL layers
--------------------------------------
Zoo models take ``block_ell: FrozenDict[path -> BlockPattern] | None``, keyed by the
torch module path of the layer (``"layer1.0.conv1"``, ``"classifier.1"``,
``"encoder.layers.encoder_layer_0.mlp.0"``). Every zoo conv and dense layer is a
:class:`Conv` / :class:`Dense` (``nn.Conv`` / ``nn.Dense`` subclasses, made by
``layers.conv`` and ``layers.Dense``) that, when called, looks for the nearest ancestor
module with a ``block_ell`` attribute and its own path below it; if the spec names it,
it runs as Block-ELL, otherwise exactly as its Flax base class. No intermediate module
passes the spec on, and the dense model is unchanged (same parameters, same numbers).

Eligible layers: ungrouped 1x1 convs with zero padding (stride s subsamples the input
first: a 1x1 conv with stride s and no padding is ``x[:, ::s, ::s] @ W``) and Dense
layers. A spec naming another layer raises a one-line ``ValueError`` with its path.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from flax.linen.dtypes import promote_dtype

from kernels import BlockELL, BlockELLMeta, bell_matmul_parts, check_block_size
from kernels.operands import ForwardIndex, forward_index

Array = jax.Array
BlockELLSpec = FrozenDict  # FrozenDict[str, BlockPattern]: hashable, a Flax module attribute

VALUES = "bell_values"  # the parameter name of the stored blocks
ELIGIBLE = "ungrouped 1x1 convs without padding and Dense layers"

__all__ = ["BlockPattern", "BlockELLSpec", "VALUES", "as_spec", "spec_to_dict",
           "spec_from_dict", "gather_blocks", "Conv", "Dense", "BlockELLDense",
           "BlockELLConv1x1", "LayerInfo", "eligible_layers", "check_block_ell"]


# ------------------------------------------------------------------ pattern
@dataclasses.dataclass(frozen=True, eq=False)
class BlockPattern:
    """The static sparsity pattern of one layer W [K, N] (hashable, compared by value).

    Attributes:
      col_idx: [R, S] int32 (read-only numpy), block-column of each slot, -1 padding.
      meta: ``BlockELLMeta`` (logical (K, N), block b, col_slots T).
    """

    col_idx: np.ndarray
    meta: BlockELLMeta

    def __post_init__(self):
        if not isinstance(self.meta, BlockELLMeta):
            raise ValueError(f"meta={self.meta!r} must be a BlockELLMeta")
        idx = np.array(self.col_idx)
        if idx.ndim != 2 or idx.shape[0] != self.meta.n_row_blocks:
            raise ValueError(f"col_idx.shape={idx.shape} must be [R={self.meta.n_row_blocks}, S]")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"col_idx.dtype={idx.dtype} must be integer")
        idx = idx.astype(np.int32)
        c_blocks = self.meta.n_col_blocks
        bad = np.argwhere((idx < -1) | (idx >= c_blocks))
        if bad.size:
            r, s = bad[0]
            raise ValueError(f"col_idx[{r}, {s}]={idx[r, s]} is out of range [-1, {c_blocks})")
        for r, row in enumerate(idx):
            row = row[row >= 0]
            if row.size != np.unique(row).size:
                raise ValueError(f"col_idx row {r} repeats a block-column")
        counts = np.bincount(idx[idx >= 0].astype(np.int64), minlength=c_blocks)
        if counts.max(initial=0) > self.meta.col_slots:
            raise ValueError(f"a block-column holds {counts.max()} blocks > meta.col_slots="
                             f"{self.meta.col_slots}")
        idx.setflags(write=False)
        object.__setattr__(self, "col_idx", idx)
        object.__setattr__(self, "_hash", hash((self.meta, idx.shape, idx.tobytes())))

    def __hash__(self) -> int:
        return self.__dict__["_hash"]  # set once in __post_init__ (frozen dataclass)

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, BlockPattern) and self.meta == other.meta
                and np.array_equal(self.col_idx, other.col_idx))

    def __repr__(self) -> str:
        return (f"BlockPattern(shape={self.meta.shape}, block={self.meta.block}, "
                f"slots={self.slots}, density={self.density():.3f})")

    @classmethod
    def from_col_idx(cls, col_idx: Any, shape: tuple[int, int], block: int) -> BlockPattern:
        """Pattern of W [K, N] = ``shape`` from ``col_idx`` [R, S]; col_slots is computed."""
        block = check_block_size(block)
        meta0 = BlockELLMeta((int(shape[0]), int(shape[1])), block, 0)
        idx = np.asarray(col_idx)
        valid = idx[(idx >= 0) & (idx < meta0.n_col_blocks)].astype(np.int64)
        t = int(min(np.bincount(valid, minlength=1).max(initial=0), meta0.n_row_blocks))
        return cls(idx, BlockELLMeta(meta0.shape, block, t))

    @classmethod
    def from_block_ell(cls, w: BlockELL) -> BlockPattern:
        """The pattern of a ``kernels.BlockELL`` (its values are not kept)."""
        return cls(np.asarray(w.col_idx), w.meta)

    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.shape

    @property
    def block(self) -> int:
        return self.meta.block

    @property
    def slots(self) -> int:
        """S, slots per block-row (padding included)."""
        return int(self.col_idx.shape[1])

    @property
    def values_shape(self) -> tuple[int, int, int, int]:
        """[R, S, b, b], the shape of the layer's ``bell_values``."""
        b = self.meta.block
        return (self.meta.n_row_blocks, self.slots, b, b)

    def block_mask(self) -> np.ndarray:
        """[R, C] bool, True where a block is stored."""
        mask = np.zeros((self.meta.n_row_blocks, self.meta.n_col_blocks), bool)
        rows, slots = np.nonzero(self.col_idx >= 0)
        mask[rows, self.col_idx[rows, slots]] = True
        return mask

    def density(self) -> float:
        """Stored blocks / all R*C blocks."""
        return float(np.mean(self.block_mask())) if self.col_idx.size else 0.0

    def forward_index(self) -> ForwardIndex:
        """The GPU kernels' forward index of this pattern (numpy; computed once, then
        embedded as constants, so no jitted call sorts ``col_idx`` again)."""
        cached = self.__dict__.get("_forward_index")
        if cached is None:
            with jax.ensure_compile_time_eval():  # concrete even when first asked in a trace
                cached = ForwardIndex(*(np.asarray(a) for a in
                                        forward_index(self.col_idx, self.meta)))
            object.__setattr__(self, "_forward_index", cached)
        return cached


def as_spec(spec: Mapping[str, BlockPattern] | None) -> BlockELLSpec | None:
    """A validated ``FrozenDict`` (``None`` or empty -> ``None``: a dense model)."""
    if not spec:
        return None
    for key, pattern in spec.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"block_ell key {key!r} must be a layer path like 'layer1.0.conv1'")
        if not isinstance(pattern, BlockPattern):
            raise ValueError(f"block_ell[{key!r}] of type {type(pattern).__name__} must be a "
                             "BlockPattern")
    return FrozenDict(dict(spec))


def spec_to_dict(spec: Mapping[str, BlockPattern] | None) -> dict[str, dict]:
    """JSON-ready ``{path: {"shape": [K, N], "block": b, "col_idx": [[...], ...]}}``."""
    return {k: {"shape": list(p.shape), "block": p.block, "col_idx": p.col_idx.tolist()}
            for k, p in sorted((spec or {}).items())}


def spec_from_dict(data: Mapping[str, Mapping[str, Any]]) -> BlockELLSpec | None:
    """Inverse of :func:`spec_to_dict`; a one-line ``ValueError`` names a bad entry."""
    out = {}
    for key, entry in data.items():
        try:
            k, n = (int(d) for d in entry["shape"])
            shape = (k, n)
            rows = BlockELLMeta(shape, check_block_size(entry["block"]), 0).n_row_blocks
            idx = np.asarray(entry["col_idx"], np.int64).reshape(rows, -1)
            out[key] = BlockPattern.from_col_idx(idx, shape, entry["block"])
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ValueError(f"block_ell entry {key!r}: {e}") from None
    return as_spec(out)


def gather_blocks(w: Array, col_idx: Any, meta: BlockELLMeta) -> Array:
    """values [R, S, b, b] of dense W [K, N] at ``col_idx`` (zeros in padding slots);
    the inverse of ``kernels.densify`` on the stored blocks (in-graph)."""
    r_blocks, c_blocks, b = meta.n_row_blocks, meta.n_col_blocks, meta.block
    kp, np_ = meta.padded_shape
    w = jnp.pad(w, ((0, kp - w.shape[0]), (0, np_ - w.shape[1])))
    blocks = w.reshape(r_blocks, b, c_blocks, b).transpose(0, 2, 1, 3)
    idx = jnp.asarray(col_idx)
    rows = jnp.arange(r_blocks)[:, None]
    out = blocks[rows, jnp.maximum(idx, 0)]
    return jnp.where((idx >= 0)[:, :, None, None], out, jnp.zeros((), w.dtype))


# ------------------------------------------------------------- the layers
def _block_ell_apply(module: nn.Module, x: Array, pattern: BlockPattern, path: str,
                     kernel_shape: tuple[int, ...], backend: str = "auto") -> Array:
    """y [..., N] = x [..., K] @ W + bias with W from ``module``'s ``bell_values``.

    Creates the parameters on ``module`` (``bell_values`` [R, S, b, b], ``bias`` [N] when
    ``module.use_bias``); ``bell_values`` initialize as the kept blocks of a dense kernel
    of ``kernel_shape`` drawn from ``module.kernel_init``.
    """
    k, n = pattern.shape
    if x.shape[-1] != k or module.features != n:
        raise ValueError(f"{path}: Block-ELL pattern is for W [{k}, {n}] but the layer maps "
                         f"{x.shape[-1]} -> {module.features} features")

    def init_values(rng):
        w = module.kernel_init(rng, kernel_shape, module.param_dtype).reshape(k, n)
        return gather_blocks(w, pattern.col_idx, pattern.meta)

    values = module.param(VALUES, init_values)
    bias = (module.param("bias", module.bias_init, (n,), module.param_dtype)
            if module.use_bias else None)
    x, values, bias = promote_dtype(x, values, bias, dtype=module.dtype)
    index = ForwardIndex(*map(jnp.asarray, pattern.forward_index()))
    y = bell_matmul_parts(x, values, jnp.asarray(pattern.col_idx), pattern.meta,
                          backend=backend, precision=module.precision, index=index)
    return y if bias is None else y + bias


def _pair(v: Any) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v) if v is not None else (1, 1)


def _conv_ineligible(m: nn.Module) -> str | None:
    """Why conv ``m`` cannot be Block-ELL, or None."""
    ks = _pair(m.kernel_size)
    if ks != (1, 1):
        return f"a {'x'.join(map(str, ks))} conv"
    if m.feature_group_count != 1:
        return f"a grouped conv (groups={m.feature_group_count})"
    pad = m.padding
    if isinstance(pad, (str, int)):
        zero = pad in ("VALID", "SAME", 0)  # 'SAME' pads nothing for a 1x1 window
    else:
        zero = all((p == 0 if isinstance(p, int) else tuple(p) == (0, 0)) for p in pad)
    if not zero:
        return f"a padded 1x1 conv (padding={pad!r})"
    if m.input_dilation not in (None, 1) and _pair(m.input_dilation) != (1, 1):
        return "an input-dilated conv"
    if m.mask is not None:
        return "a masked conv"
    return None


def _conv1x1(module: nn.Module, x: Array, pattern: BlockPattern, path: str,
             backend: str = "auto") -> Array:
    """NHWC [B, H, W, K] -> [B, ceil(H/s), ceil(W/s), N]: subsample by the stride, then
    a Block-ELL matmul over the flattened pixels (``bell_matmul_parts`` reshapes
    [..., K] to [B*H*W, K])."""
    if x.ndim < 3:
        raise ValueError(f"{path}: a conv input must be [..., H, W, C], got {tuple(x.shape)}")
    sh, sw = _pair(module.strides)
    if (sh, sw) != (1, 1):
        x = x[..., ::sh, ::sw, :]
    return _block_ell_apply(module, x, pattern, path, (1, 1, pattern.shape[0], pattern.shape[1]),
                            backend)


def find_pattern(module: nn.Module) -> tuple[str, BlockPattern] | None:
    """(path, pattern) of a bound layer whose nearest ``block_ell``-holding ancestor's
    spec names it; None if no ancestor holds a spec or the spec does not name it."""
    node = module.parent
    while isinstance(node, nn.Module):
        spec = getattr(node, "block_ell", None)
        if spec is not None:
            path = ".".join(module.path[len(node.path):])
            pattern = spec.get(path)
            return None if pattern is None else (path, pattern)
        node = node.parent
    return None


class Conv(nn.Conv):
    """The zoo's convolution: ``nn.Conv``, or Block-ELL where its model's spec names it.

    ``__call__`` only dispatches (``nowrap``: no scope of its own), so a dense layer runs
    exactly ``nn.Conv.__call__`` under its own name scope (MACs and graph paths are those
    of a plain ``nn.Conv``); a Block-ELL layer runs :meth:`block_ell_call`.
    """

    @nn.nowrap
    def __call__(self, x: Array) -> Array:
        found = find_pattern(self)
        if found is None:
            return super().__call__(x)
        path, pattern = found
        reason = _conv_ineligible(self)
        if reason is not None:
            raise ValueError(f"{path}: {reason} is not eligible for Block-ELL ({ELIGIBLE})")
        return self.block_ell_call(x, path, pattern)

    @nn.compact
    def block_ell_call(self, x: Array, path: str, pattern: BlockPattern) -> Array:
        return _conv1x1(self, x, pattern, path)


class Dense(nn.Dense):
    """The zoo's dense layer: ``nn.Dense``, or Block-ELL where its model's spec names it
    (dispatch as in :class:`Conv`)."""

    @nn.nowrap
    def __call__(self, x: Array) -> Array:
        found = find_pattern(self)
        if found is None:
            return super().__call__(x)
        return self.block_ell_call(x, *found)

    @nn.compact
    def block_ell_call(self, x: Array, path: str, pattern: BlockPattern) -> Array:
        return _block_ell_apply(self, x, pattern, path, pattern.shape)


class BlockELLDense(nn.Module):
    """Standalone Block-ELL dense layer: [..., K] -> [..., N] (N = ``features``).

    Parameters: ``bell_values`` [R, S, b, b] and ``bias`` [N] (if ``use_bias``).
    ``pattern`` (static) fixes K, N, b and the stored blocks.
    """

    features: int
    pattern: BlockPattern
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    backend: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _block_ell_apply(self, x, self.pattern, self.name or "BlockELLDense",
                                self.pattern.shape, self.backend)


class BlockELLConv1x1(nn.Module):
    """Standalone Block-ELL 1x1 conv, NHWC [B, H, W, K] -> [B, ceil(H/s), ceil(W/s), N].

    Equal to ``nn.Conv(N, (1, 1), strides=s, padding=0)`` with kernel [1, 1, K, N] =
    the densified pattern. Parameters: ``bell_values`` [R, S, b, b], ``bias`` [N].
    """

    features: int
    pattern: BlockPattern
    strides: int | tuple[int, int] = 1
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    backend: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _conv1x1(self, x, self.pattern, self.name or "BlockELLConv1x1", self.backend)


# ---------------------------------------------------------- model queries
class LayerInfo(NamedTuple):
    """An eligible layer: ``kind`` 'conv' or 'dense', W [k, n], conv ``stride``
    (1 for dense), ``kernel_shape`` of its dense kernel."""

    kind: str
    k: int
    n: int
    stride: tuple[int, int]
    kernel_shape: tuple[int, ...]


def _abstract_init(model: nn.Module, input_shape: tuple[int, ...], dtype=jnp.float32):
    def init():
        v = model.init(jax.random.key(0), jnp.zeros(input_shape, dtype), train=False)
        return {k: x for k, x in v.items() if k != "intermediates"}
    return jax.eval_shape(init)


def eligible_layers(model: nn.Module, input_shape: tuple[int, ...],
                    dtype=jnp.float32) -> dict[str, LayerInfo]:
    """Every layer of a zoo model that can become Block-ELL, in call order.

    Found by shape-evaluating ``model.init`` (nothing is computed) and intercepting
    each :class:`Conv` / :class:`Dense` call; layers already Block-ELL are included.

    Args:
      model: an unbound zoo model (``init(rng, x, train=False)`` contract).
      input_shape: NHWC input shape (the batch size does not matter).
    Returns:
      ``{torch-style path: LayerInfo}``.
    """
    found: dict[str, LayerInfo] = {}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if (context.method_name in ("__call__", "block_ell_call")
                and isinstance(m, (Conv, Dense)) and args):
            path = ".".join(m.path)
            k = int(args[0].shape[-1])
            if isinstance(m, Dense):
                found[path] = LayerInfo("dense", k, m.features, (1, 1), (k, m.features))
            elif _conv_ineligible(m) is None:
                found[path] = LayerInfo("conv", k, m.features, _pair(m.strides),
                                        (1, 1, k, m.features))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _abstract_init(model, input_shape, dtype)
    return found


def check_block_ell(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Checks a zoo model's ``block_ell`` spec against the model (shape-only).

    Every entry must name an eligible layer whose W [K, N] matches the pattern;
    raises a one-line ``ValueError`` naming the first bad path.
    """
    spec = getattr(model, "block_ell", None)
    if not spec:
        return
    shapes = _abstract_init(model, input_shape)  # layers raise on ineligible / mismatch
    present = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes.get("params", {}))[0]:
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == VALUES:
            present.add(".".join(names[:-1]))
    missing = sorted(set(spec) - present)
    if missing:
        dense = eligible_layers(model.clone(block_ell=None), input_shape)
        near = difflib.get_close_matches(missing[0], list(dense), n=3)
        raise ValueError(f"block_ell names {missing[0]!r}, which is no layer of "
                         f"{getattr(model, 'arch', type(model).__name__)}"
                         + (f" (close: {near})" if near else ""))
