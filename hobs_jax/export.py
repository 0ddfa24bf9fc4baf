"""Export a (pruned) network: an orbax checkpoint that reloads with one call (zoo models,
a user's linen module, an NNX module), a torchvision-structured PyTorch module (zoo), or
an ONNX graph (any network).

The only module of the core library that reaches torch, and only inside
:func:`to_torch` / :func:`to_onnx`, which call into ``parity`` lazily: a user without
PyTorch can save and load.

Checkpoint layout (a directory)::

    <path>/meta.json     {"format": "hobs_jax.export", "version": 1, "model": ...,
                          "widths": {...}, "num_classes": ..., "in_channels": ...,
                          "scale_dim": ... (ViT), "plan": <PrunePlan JSON> | null,
                          "shapes": {leaf path: shape}}
    <path>/variables/    orbax StandardCheckpointer tree (params, batch_stats)

A network outside the zoo is saved with what rebuilds it in another process
(:mod:`hobs_jax.graph.spec`): ``"kind": "linen" | "nnx"``, ``"spec"`` (its class's import
path and constructor arguments), ``"input_shape"``; a class defined in ``__main__`` or a
field that is not JSON (a function) is refused in one line before anything is written.

It is written under ``<path>.tmp-<random>`` and renamed into place when complete, so a
half-written checkpoint is never found at ``<path>``; :func:`load` checks every array
against the model the metadata describes and reports problems in one line.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

FORMAT, VERSION = "hobs_jax.export", 1


def _zoo(model_or_name) -> tuple[str, Any]:
    from hobs_jax.graph.surgery import zoo_name

    name = zoo_name(model_or_name)
    return name, (None if isinstance(model_or_name, str) else model_or_name)


def _scale_dim(name: str, module, scale_dim: int | None) -> int | None:
    from hobs_jax import models

    if models.get_entry(name).family != "vit":
        return None
    if scale_dim is not None:
        return int(scale_dim)
    if module is not None:
        return int(module.scale_dim)
    return models.default_widths(name)["encoder_layer_0.qk_dim"]


def _flat(tree) -> dict[str, Any]:
    return {"/".join(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _build(meta: Mapping):
    from hobs_jax import models

    kw = {"scale_dim": meta["scale_dim"]} if meta.get("scale_dim") is not None else {}
    if meta.get("block_ell"):
        from hobs_jax.models.sparse import spec_from_dict

        kw["block_ell"] = spec_from_dict(meta["block_ell"])
    return models.build(meta["model"], widths=meta["widths"], num_classes=meta["num_classes"],
                        in_channels=meta["in_channels"], **kw)


def _is_zoo(model) -> bool:
    from hobs_jax import models
    from hobs_jax.models.prunable import Prunable

    if isinstance(model, Prunable):
        return model.kind == "zoo"
    return isinstance(model, str) or getattr(model, "arch", None) in models.MODELS


def save(path: str | os.PathLike, model_name, variables: Mapping | None = None, plan=None, *,
         scale_dim: int | None = None, overwrite: bool = False, input_shape=None,
         init_kwargs: Mapping | None = None) -> str:
    """Write a checkpoint of a network.

    Args:
      path: the checkpoint directory (must not exist unless ``overwrite``).
      model_name: a zoo name or zoo module, a :class:`~hobs_jax.models.Prunable`, a
        user's linen module (or its ``LinenModel`` adapter) or an NNX module.
      variables: ``params`` and ``batch_stats`` (any widths; read off the arrays); None
        for a Prunable or an NNX module (their own).
      plan: the :class:`~hobs_jax.graph.plan.PrunePlan` that produced them, kept in the
        metadata for provenance.
      scale_dim: ViT's softmax temperature dim (default: the module's, else 64).
      input_shape: a non-zoo network's input shape (default: the Prunable's).
      init_kwargs: an NNX module's constructor keyword arguments (module docstring).
    A model with Block-ELL layers (``model.block_ell``) must be passed as the module: its
    sparsity pattern is configuration and is stored in the metadata.
    Returns:
      the absolute path.
    """
    from hobs_jax import models

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True to replace it")
    if not _is_zoo(model_name):
        meta, variables = _user_meta(model_name, variables, input_shape, init_kwargs, plan)
        return _write(path, meta, variables)
    if not isinstance(model_name, (str,)) and hasattr(model_name, "rebuild"):  # a zoo Prunable
        variables = model_name.variables if variables is None else variables
        model_name = model_name.module
    name, module = _zoo(model_name)
    if variables is None:
        raise ValueError(f"export.save({name!r}, ...): variables are required")
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    spec = getattr(module, "block_ell", None)
    if spec:  # Block-ELL layers hold `bell_values`, not kernels: widths come from the module
        from hobs_jax.models.sparse import spec_to_dict

        widths, nc, ic = dict(module.widths), module.num_classes, module.in_channels
    else:
        widths, nc, ic = models.infer_widths(name, variables)
    meta = {"format": FORMAT, "version": VERSION, "model": name, "widths": widths, "num_classes": nc,
            "in_channels": ic, "scale_dim": _scale_dim(name, module, scale_dim),
            "block_ell": spec_to_dict(spec) if spec else None,
            "plan": None if plan is None else json.loads(plan.to_json()),
            "shapes": {k: list(np.shape(v)) for k, v in _flat(variables).items()}}
    return _write(path, meta, variables)


def _user_meta(model, variables, input_shape, init_kwargs, plan) -> tuple[dict, dict]:
    """Metadata and variables of a network outside the zoo (refusals before writing)."""
    from hobs_jax.graph import as_prunable
    from hobs_jax.graph.spec import check_spec, spec_of

    p = as_prunable(model, variables, input_shape)
    spec = spec_of(p, init_kwargs)
    check_spec(p, spec)
    variables = {k: v for k, v in p.variables.items() if k in ("params", "batch_stats")}
    meta = {"format": FORMAT, "version": VERSION, "model": p.label, "kind": p.kind, "spec": spec,
            "input_shape": list(p.input_shape), "plan": None if plan is None else json.loads(plan.to_json()),
            "shapes": {k: list(np.shape(v)) for k, v in _flat(variables).items()}}
    return meta, variables


def _write(path: str, meta: dict, variables: Mapping) -> str:
    import orbax.checkpoint as ocp

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "variables"), jax.tree.map(np.asarray, variables))
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        if os.path.exists(path):
            old = f"{path}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _what_is(path: str) -> str:
    """What a directory without meta.json looks like (a hint for the one-line error)."""
    names = set(os.listdir(path))
    steps = [n for n in names if n.isdigit()]
    if steps and any(os.path.isdir(os.path.join(path, n, "state")) for n in steps):
        return ("; it holds training checkpoints (hobs_jax.train, steps " + ", ".join(sorted(steps, key=int)[-3:])
                + "): load an exported model instead, e.g. a pipeline stage's model/ folder")
    if names & {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint"}:
        return "; it is an orbax checkpoint not written by hobs_jax.export.save"
    if any(n.startswith(".tmp") or ".tmp-" in n for n in names) or not names:
        return "; it is empty or an unfinished save"
    return ""


def load(path: str | os.PathLike) -> tuple[Any, dict, dict]:
    """``(model, variables, meta)`` from a checkpoint written by :func:`save`.

    ``model`` is the network at the saved widths, ready for ``model.apply(variables,
    x)``: the zoo model, or for a user's module its adapter (``meta["prunable"]`` is its
    :class:`~hobs_jax.models.Prunable`; ``.to_nnx()`` gives an NNX module back).
    ``variables`` hold numpy arrays of the saved dtypes, ``meta`` the metadata (with
    ``plan`` as a :class:`~hobs_jax.graph.plan.PrunePlan` or None). A missing,
    half-written or corrupt checkpoint raises a one-line ``ValueError``.
    """
    from hobs_jax import models
    from hobs_jax.graph.plan import PrunePlan

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        what = "" if not os.path.exists(path) else \
            ": a file; torch files load with init.kind='torch'"
        raise ValueError(f"no hobs_jax checkpoint at {path} (not a directory{what})")
    meta_file = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_file):
        raise ValueError(f"{path} is not a complete hobs_jax checkpoint (no meta.json){_what_is(path)}")
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt checkpoint {path}: meta.json unreadable ({_one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (meta.json has format {fmt!r})")
    if meta.get("version") != VERSION:
        v = meta.get("version")
        newer = isinstance(v, int) and v > VERSION
        raise ValueError(f"{path} is a {FORMAT} checkpoint of format version {v!r}, written by "
                         f"{'a newer' if newer else 'another'} hobs_jax; this one reads version "
                         f"{VERSION}" + ("; upgrade hobs_jax" if newer else ""))
    if meta.get("kind") in ("linen", "nnx"):
        return _load_user(path, meta)
    try:
        model = _build(meta)
        plan = None if meta.get("plan") is None else PrunePlan.from_json(json.dumps(meta["plan"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt checkpoint {path}: bad metadata ({_one_line(e)})") from None
    import orbax.checkpoint as ocp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variables = ocp.StandardCheckpointer().restore(os.path.join(path, "variables"))
    except Exception as e:  # orbax raises many types for truncated/corrupt files
        raise ValueError(f"corrupt checkpoint {path}: variables do not restore ({_one_line(e)})") from None
    expected = _expected_shapes(model, models.input_shape(meta["model"], 1, in_channels=meta["in_channels"]))
    got = _flat(variables)
    for key, leaf in expected.items():
        if key not in got:
            raise ValueError(f"corrupt checkpoint {path}: variables lack {key}")
        if tuple(np.shape(got[key])) != tuple(leaf.shape):
            raise ValueError(f"corrupt checkpoint {path}: {key} has shape {tuple(np.shape(got[key]))}, "
                             f"the model at the saved widths expects {tuple(leaf.shape)}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ValueError(f"corrupt checkpoint {path}: unexpected variable {extra[0]}")
    return model, variables, dict(meta, plan=plan)


@functools.lru_cache(maxsize=32)
def _expected_shapes(model, shape: tuple[int, ...]) -> dict[str, Any]:
    """The variables a zoo model at its widths has (shape-only init; traced once per model:
    a sweep loads the same dense checkpoint several times per row)."""
    from hobs_jax import models

    return _flat(jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape)))


def _restore(path: str):
    import orbax.checkpoint as ocp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ocp.StandardCheckpointer().restore(os.path.join(path, "variables"))
    except Exception as e:  # orbax raises many types for truncated/corrupt files
        raise ValueError(f"corrupt checkpoint {path}: variables do not restore ({_one_line(e)})") from None


def _load_user(path: str, meta: dict) -> tuple[Any, dict, dict]:
    from hobs_jax.graph.plan import PrunePlan
    from hobs_jax.graph.spec import prunable_from_spec

    try:
        plan = None if meta.get("plan") is None else PrunePlan.from_json(json.dumps(meta["plan"]))
        spec, shape = meta["spec"], tuple(meta["input_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt checkpoint {path}: bad metadata ({_one_line(e)})") from None
    variables = _restore(path)
    got = {k: tuple(np.shape(v)) for k, v in _flat(variables).items()}
    want = {k: tuple(v) for k, v in meta.get("shapes", {}).items()}
    if got != want:
        bad = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want.get(k))
        raise ValueError(f"corrupt checkpoint {path}: variables do not match its metadata at {bad[0]}")
    try:
        p = prunable_from_spec(spec, variables, shape)
    except ValueError as e:
        raise ValueError(f"checkpoint {path}: {str(e).splitlines()[0]}") from None
    return p.module, dict(p.variables), dict(meta, plan=plan, prunable=p)


def load_prunable(path: str | os.PathLike):
    """The :class:`~hobs_jax.models.Prunable` of a checkpoint (any network): for an NNX
    module, ``load_prunable(path).to_nnx()`` is the module at the saved widths."""
    model, variables, meta = load(path)
    if "prunable" in meta:
        return meta["prunable"]
    from hobs_jax.models.prunable import prunable

    return prunable(model, variables)


def to_torch(model_name, variables: Mapping, *, scale_dim: int | None = None):
    """``(module, state_dict)``: a torchvision-structured ``torch.nn.Module`` (eval mode)
    at the widths of ``variables`` (float64 arrays give a float64 module); pruned ViT
    attention becomes ``parity.torch_models.HeadAttention``. Needs torch."""
    if not _is_zoo(model_name):
        from hobs_jax.graph.prunable import label_of

        label = model_name.label if hasattr(model_name, "rebuild") else label_of(model_name)
        raise ValueError(f"to_torch converts zoo models (torchvision's structure); {label} is not one: "
                         f"use export.to_onnx")
    if hasattr(model_name, "rebuild"):
        model_name = model_name.module
    from parity.convert import flax_to_torch

    name, module = _zoo(model_name)
    torch_module = flax_to_torch(name, variables, scale_dim=_scale_dim(name, module, scale_dim))
    return torch_module, torch_module.state_dict()


def to_onnx(model_name, variables: Mapping | None, path: str | os.PathLike, *, input_shape=None,
            scale_dim: int | None = None, opset: int = 17, via: str | None = None) -> str:
    """Export any network to ONNX.

    ``via="jax"`` (the default outside the zoo) translates the network's jaxpr
    (:mod:`hobs_jax.onnx_export`, no PyTorch): input ``"input"`` in Flax's layout (NHWC)
    at the batch size of ``input_shape``, output ``"logits"``. ``via="torch"`` (the
    default for zoo models) exports the torchvision-structured module with
    ``torch.onnx.export`` (the TorchScript exporter: the dynamo exporter needs
    ``onnxscript``): input NCHW with a dynamic batch. ``input_shape`` is NHWC (default: the
    zoo's, batch 1; required outside the zoo unless ``model_name`` is a Prunable).
    """
    zoo = _is_zoo(model_name)
    via = via or ("torch" if zoo else "jax")
    if via not in ("torch", "jax"):
        raise ValueError(f"via={via!r}: use 'torch' (zoo models) or 'jax'")
    path = os.fspath(path)
    if via == "jax":
        from hobs_jax.graph import as_prunable
        from hobs_jax.onnx_export import to_onnx_model

        p = as_prunable(model_name, variables, input_shape)
        shape = tuple(input_shape) if input_shape is not None else p.input_shape
        params = jax.tree.map(np.asarray, p.variables)
        onnx_model = to_onnx_model(lambda x: p.module.apply(params, x, train=False), shape)
        with open(path, "wb") as f:
            f.write(onnx_model.SerializeToString())
        return path
    if not zoo:
        raise ValueError("via='torch' exports zoo models only; use via='jax'")
    import torch

    from hobs_jax import models

    if hasattr(model_name, "rebuild"):
        variables = model_name.variables if variables is None else variables
        model_name = model_name.module
    if variables is None:
        raise ValueError("to_onnx(via='torch'): pass the zoo model's variables")
    name, _ = _zoo(model_name)
    module, _ = to_torch(model_name, variables, scale_dim=scale_dim)
    _, _, ic = models.infer_widths(name, variables)
    b, h, w, c = tuple(input_shape) if input_shape is not None else models.input_shape(name, 1, in_channels=ic)
    dtype = next(p.dtype for p in module.parameters())
    x = torch.zeros((b, c, h, w), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, still supported
        torch.onnx.export(module, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                          opset_version=opset, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path
