"""Convert zoo models between dense and Block-ELL layers (balanced block pruning).

``to_block_ell`` prunes the eligible layers of a (possibly channel-pruned) zoo model
(ungrouped 1x1 convs and Dense layers, :func:`hobs_jax.models.sparse.eligible_layers`)
to balanced Block-ELL (magnitude: ``kernels.prune``; block OBS: the OBS engine's
:func:`hobs_jax.obs.block.prune`) and returns the same zoo model built with
a ``block_ell`` spec plus its variables; ``to_dense`` goes back (the dropped blocks
become zeros), which is also how a Block-ELL model exports to PyTorch
(``parity.convert.flax_to_torch(name, to_dense(m, v)[1])``).

Invariant (tests/test_block_ell_models.py): ``sparse_model.apply(sparse_variables, x)``
equals ``dense_model.apply(dense_variables, x)`` for ``to_dense``'s output to float32
rounding, and fine-tuning the sparse model only ever changes the kept blocks.

Layout rule: W [K, N] is zero-padded up to multiples of the block b (the kernels keep
the logical shape), and b must not exceed K or N of a converted layer (a block larger
than the layer would be mostly padding). With ``layers=None`` layers the block does not
fit are left dense; a layer asked for explicitly raises. Graph-free: channel pruning is
whatever widths the model was built at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from hobs_jax import models
from hobs_jax.models import sparse as msparse
from hobs_jax.obs import block as block_obs
from kernels import check_block_size, check_sparsity, prune

__all__ = ["to_block_ell", "to_dense", "select_layers", "densify_values"]

LayerSelection = Sequence[str] | Callable[[str], bool] | None


def _resolve_model(model: str | nn.Module, variables: Mapping) -> nn.Module:
    if isinstance(model, str):
        widths, nc, ic = models.infer_widths(model, variables)
        return models.build(model, widths=widths, num_classes=nc, in_channels=ic)
    if not isinstance(model, nn.Module) or not hasattr(model, "block_ell"):
        raise ValueError(f"model of type {type(model).__name__} must be a zoo model name or "
                         "a zoo model (with a block_ell attribute)")
    return model


def _input_shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    return models.input_shape(model.arch, 1, in_channels=model.in_channels,
                              size=getattr(model, "image_size", None))


def _per_layer(value: Any, path: str, what: str) -> Any:
    if isinstance(value, Mapping):
        if path not in value:
            raise ValueError(f"{what} has no entry for layer {path!r}")
        return value[path]
    return value


def select_layers(model: nn.Module, block: int | Mapping[str, int],
                  layers: LayerSelection = None, *, input_shape: tuple[int, ...] | None = None,
                  exclude: Sequence[str] = ()) -> dict[str, msparse.LayerInfo]:
    """The layers ``to_block_ell`` would convert: ``{path: LayerInfo}`` in call order.

    Args:
      model: unbound zoo model.
      block: block size, or a mapping path -> block size.
      layers: None = every eligible layer the block fits (K, N >= b); a sequence of
        paths (each must be eligible and fit, else a one-line ``ValueError`` naming it);
        or a predicate ``path -> bool`` over the eligible layers the block fits.
      exclude: paths never selected (layers that are already Block-ELL).
    """
    shape = _input_shape(model, input_shape)
    eligible = {p: i for p, i in msparse.eligible_layers(model, shape).items() if p not in exclude}

    def fits(path: str, info: msparse.LayerInfo) -> bool:
        b = check_block_size(_per_layer(block, path, "block"))
        return b <= min(info.k, info.n)

    if layers is None or callable(layers):
        keep = layers or (lambda _: True)
        return {p: i for p, i in eligible.items() if keep(p) and fits(p, i)}
    if isinstance(layers, str):
        raise ValueError(f"layers={layers!r} must be a sequence of paths, not one string")
    out = {}
    for path in layers:
        if path in exclude:
            raise ValueError(f"{path}: already a Block-ELL layer")
        if path not in eligible:
            raise ValueError(f"{path}: not an eligible layer of {model.arch} ({msparse.ELIGIBLE}; "
                             f"eligible e.g. {list(eligible)[:3]})")
        info = eligible[path]
        if not fits(path, info):
            b = _per_layer(block, path, "block")
            raise ValueError(f"{path}: block={b} exceeds W [K={info.k}, N={info.n}] (K and N are "
                             "zero-padded to multiples of the block; it must not exceed either)")
        out[path] = info
    return out


def to_block_ell(model: str | nn.Module, variables: Mapping,
                 sparsity: float | Mapping[str, float], block: int | Mapping[str, int], *,
                 method: str = "magnitude", hessians: Mapping[str, Any] | None = None,
                 layers: LayerSelection = None, damp: float = 0.01,
                 input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, dict]:
    """Balanced block pruning of a zoo model's eligible layers into Block-ELL layers.

    Args:
      model: a zoo model name (widths, classes and channels are read off
        ``variables``) or an unbound zoo model (needed for non-default kwargs such as
        a ViT's ``image_size``). Layers it already has as Block-ELL stay as they are.
      variables: {'params', 'batch_stats'?} of that (dense) model.
      sparsity: fraction of blocks dropped per block-row, in [0, 1) (or per path).
      block: block size b, a power of two (or per path).
      method: 'magnitude' (block Frobenius norm) or 'obs' (block-OBS saliency and
        compensation, :func:`hobs_jax.obs.block.prune`).
      hessians: for 'obs', path -> H [K, K] of the layer inputs (for a strided 1x1
        conv: of the subsampled inputs).
      layers: which layers (:func:`select_layers`); default every eligible layer the
        block fits, or the keys of ``sparsity`` when it is a mapping.
      damp: OBS dampening.
      input_shape: NHWC shape for shape evaluation (default the model's input size).
    Returns:
      (sparse_model, sparse_variables): the zoo model with ``block_ell`` set; in
      ``params`` each converted layer's ``kernel`` [.., K, N] is replaced by
      ``bell_values`` [R, S, b, b] (bias and every other leaf unchanged).
    """
    model = _resolve_model(model, variables)
    if "params" not in variables:
        raise ValueError(f"variables has no 'params' (keys: {sorted(variables)})")
    for path, s in (sparsity.items() if isinstance(sparsity, Mapping) else [("", sparsity)]):
        try:
            check_sparsity(s)
        except ValueError as e:
            raise ValueError(f"{path}: {e}" if path else str(e)) from None
    if method not in ("magnitude", "obs"):
        raise ValueError(f"method={method!r} must be 'magnitude' or 'obs'")
    if layers is None and isinstance(sparsity, Mapping):
        layers = list(sparsity)
    old_spec = dict(model.block_ell or {})
    chosen = select_layers(model, block, layers, input_shape=input_shape, exclude=tuple(old_spec))
    if not chosen:
        raise ValueError(f"no layer of {model.arch} to convert (block={block!r}, "
                         f"layers={layers!r})")
    flat = traverse_util.flatten_dict(unfreeze(variables["params"]))
    new_spec = dict(old_spec)
    for path, info in chosen.items():
        key = tuple(path.split("."))
        kernel = flat.pop(key + ("kernel",), None)
        if kernel is None:
            raise ValueError(f"{path}: params have no {'/'.join(key)}/kernel")
        kernel = np.asarray(kernel)
        if kernel.shape != info.kernel_shape:
            raise ValueError(f"{path}: kernel.shape={kernel.shape}, the model expects "
                             f"{info.kernel_shape}")
        b, s = _per_layer(block, path, "block"), _per_layer(sparsity, path, "sparsity")
        if method == "obs":
            if hessians is None or path not in hessians:
                raise ValueError(f"{path}: method='obs' needs hessians[{path!r}] = H [K, K]")
            w = block_obs.prune(kernel.reshape(info.k, info.n), hessians[path], b, s, damp=damp)
        else:
            w = prune(kernel.reshape(info.k, info.n), b, s)
        flat[key + (msparse.VALUES,)] = jax.numpy.asarray(w.values)
        new_spec[path] = msparse.BlockPattern.from_block_ell(w)
    sparse_model = model.clone(block_ell=msparse.as_spec(new_spec))
    out = {**variables, "params": traverse_util.unflatten_dict(flat)}
    _check_variables(sparse_model, out, _input_shape(model, input_shape))
    return sparse_model, out


def densify_values(values: Any, pattern: msparse.BlockPattern) -> np.ndarray:
    """Dense W [K, N] (numpy) from ``bell_values`` [R, S, b, b]; dropped blocks are zero."""
    meta = pattern.meta
    values = np.asarray(values)
    r_blocks, c_blocks, b = meta.n_row_blocks, meta.n_col_blocks, meta.block
    if values.shape != pattern.values_shape:
        raise ValueError(f"bell_values.shape={values.shape} must be {pattern.values_shape}")
    dense = np.zeros((r_blocks, c_blocks, b, b), values.dtype)
    rows, slots = np.nonzero(pattern.col_idx >= 0)
    dense[rows, pattern.col_idx[rows, slots]] = values[rows, slots]
    dense = dense.transpose(0, 2, 1, 3).reshape(r_blocks * b, c_blocks * b)
    return dense[: meta.shape[0], : meta.shape[1]]


def to_dense(model: nn.Module, variables: Mapping, *,
             input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, dict]:
    """The dense zoo model equal to a Block-ELL one (dropped blocks zeroed).

    Args:
      model: a zoo model with a ``block_ell`` spec.
      variables: its variables (``bell_values`` per Block-ELL layer).
    Returns:
      (dense_model, dense_variables) with ``kernel`` [.., K, N] in place of each
      ``bell_values``; e.g. for ``parity.convert.flax_to_torch``.
    """
    model = _resolve_model(model, variables)
    spec = dict(model.block_ell or {})
    dense_model = model.clone(block_ell=None)
    if not spec:
        return dense_model, dict(variables)
    shape = _input_shape(model, input_shape)
    eligible = msparse.eligible_layers(dense_model, shape)
    flat = traverse_util.flatten_dict(unfreeze(variables["params"]))
    for path, pattern in spec.items():
        key = tuple(path.split("."))
        values = flat.pop(key + (msparse.VALUES,), None)
        if values is None:
            raise ValueError(f"{path}: params have no {'/'.join(key)}/{msparse.VALUES}")
        w = densify_values(values, pattern)
        flat[key + ("kernel",)] = jax.numpy.asarray(w.reshape(eligible[path].kernel_shape))
    out = {**variables, "params": traverse_util.unflatten_dict(flat)}
    _check_variables(dense_model, out, shape)
    return dense_model, out


def _check_variables(model: nn.Module, variables: Mapping, input_shape: tuple[int, ...]) -> None:
    """Every leaf of the model's abstract init is in ``variables`` with its shape."""
    want = jax.eval_shape(lambda: models.init(model, jax.random.key(0), input_shape))
    have = traverse_util.flatten_dict(unfreeze({k: variables[k] for k in want if k in variables}))
    for key, leaf in traverse_util.flatten_dict(unfreeze(want)).items():
        got = have.get(key)
        if got is None:
            raise ValueError(f"variables lack {'/'.join(key)}")
        if tuple(np.shape(got)) != tuple(leaf.shape):
            raise ValueError(f"{'/'.join(key)}: shape {tuple(np.shape(got))}, the model "
                             f"expects {tuple(leaf.shape)}")
