"""Weight conversion between torch ``state_dict``s and Flax variables, both ways.

The zoo's Flax parameter paths are torch's module paths (``layer1/0/conv1`` is
``layer1.0.conv1``), so one rule per leaf kind converts every model:

===============================  ==================================  ======================
Flax leaf                        torch key                           transform (torch->flax)
===============================  ==================================  ======================
params  .../kernel (rank 4)      ...weight  [O, I/g, kh, kw]         transpose(2, 3, 1, 0)
params  .../kernel (rank 2)      ...weight  [out, in]                transpose
params  .../scale                ...weight  (BN / LayerNorm)         -
params  .../bias, other leaves   ...bias, same name                  -
batch_stats .../mean, .../var    ...running_mean, ...running_var     -
self_attention/{query,key,value} in_proj_weight / in_proj_bias       row slices, [h*d, D]
                                                                     -> [D, h, d]
self_attention/out               out_proj.weight [D, h*dv]           -> [h, dv, D]
===============================  ==================================  ======================

``num_batches_tracked`` has no Flax counterpart: it is accepted on import and written as
0 on export (it only matters for torch's momentum=None training mode).

Every conversion is strict: missing, unexpected and mis-shaped keys raise one one-line
``ValueError`` naming every such key, before anything is returned (never a partial load).
Torch files are read only with ``torch.load(..., weights_only=True)``.

**Your own checkpoints.** A state_dict whose names differ from torchvision's converts
with key-renaming rules, ``torch_to_flax(name, sd, rename=...)``: regular expressions
applied in order to every key (``re.sub``), or the name of a preset of :data:`RENAMES`
(``"dataparallel"``: the ``module.`` prefix ``nn.DataParallel`` /
``DistributedDataParallel`` save under; ``"cifar_shortcut"``: the CIFAR ResNets of
``pytorch_resnet_cifar10`` and its many copies, whose projection is ``shortcut.0`` /
``shortcut.1`` and classifier ``linear``). Two keys renamed to one name are refused.
"""

from __future__ import annotations

import collections
import os
import re
import zipfile
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import numpy as np
import torch
from torch import nn

from hobs_jax import models
from parity.torch_models import build_torch, resize_to

_ATTN = ("query", "key", "value", "out")

RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "dataparallel": ((r"^module\.", ""),),
    "cifar_shortcut": ((r"\.shortcut\.", ".downsample."), (r"^linear\.", "fc.")),
}
Rules = Union[str, Sequence[Union[str, tuple[str, str]]], Callable[[str], str], None]


def _rules(rename: Rules) -> list[Callable[[str], str]]:
    if rename is None:
        return []
    if callable(rename):
        return [rename]
    if isinstance(rename, str):
        rename = [rename]
    out: list[Callable[[str], str]] = []
    for r in rename:
        if isinstance(r, str):
            if r not in RENAMES:
                raise ValueError(f"unknown renaming preset {r!r}; presets: {', '.join(sorted(RENAMES))}")
            out.extend(_rules(list(RENAMES[r])))
        elif isinstance(r, (tuple, list)) and len(r) == 2:
            try:
                pat = re.compile(r[0])
            except re.error as e:
                raise ValueError(f"renaming rule {r!r}: bad pattern ({e})") from None
            out.append(lambda k, pat=pat, repl=r[1]: pat.sub(repl, k))
        else:
            raise ValueError(f"renaming rule {r!r}: use (pattern, replacement), a preset name or a function")
    return out


def rename_keys(sd: Mapping[str, Any], rename: Rules) -> dict[str, Any]:
    """``sd`` with every key passed through the rules (module docstring), in order; two
    keys that end up with one name raise a one-line error naming both."""
    rules = _rules(rename)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in sd.items():
        new = key
        for rule in rules:
            new = rule(new)
        if new in out:
            raise ValueError(f"renaming maps both {origin[new]!r} and {key!r} to {new!r}")
        out[new], origin[new] = value, key
    return out


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return out


def _torch_key(path: tuple[str, ...], rank: int) -> tuple[str, str]:
    """(torch key, kind) of the Flax leaf at ``path`` = (collection, *module path, leaf)."""
    col, mods, leaf = path[0], path[1:-1], path[-1]
    mod = ".".join(mods)
    pre = f"{mod}." if mod else ""
    if col == "batch_stats":
        return pre + {"mean": "running_mean", "var": "running_var"}[leaf], "copy"
    if len(mods) >= 2 and mods[-2] == "self_attention" and mods[-1] in _ATTN:
        attn = ".".join(mods[:-1])
        if mods[-1] == "out":
            return f"{attn}.out_proj.{'weight' if leaf == 'kernel' else 'bias'}", f"out_{leaf}"
        return f"{attn}.in_proj_{'weight' if leaf == 'kernel' else 'bias'}", f"{mods[-1]}_{leaf}"
    if leaf == "kernel":
        return pre + "weight", "conv" if rank == 4 else "linear"
    if leaf == "scale":
        return pre + "weight", "copy"
    return pre + leaf, "copy"


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _attention_layouts(name: str, source: Any, sd: Mapping[str, np.ndarray],
                       widths: Mapping[str, int] | None) -> dict[str, tuple[int, int, int]]:
    """attention module path -> (heads, qk_dim, v_dim), from the module, the widths, or
    (for a bare state_dict) the default head count with q/k/v of equal size."""
    out = {}
    for key in sd:
        if not key.endswith("in_proj_weight"):
            continue
        path = key[: -len(".in_proj_weight")]
        layer = path.split(".")[-2]  # encoder.layers.<encoder_layer_i>.self_attention
        if isinstance(source, nn.Module):
            m = source.get_submodule(path)
            if isinstance(m, nn.MultiheadAttention):
                out[path] = (m.num_heads, m.head_dim, m.head_dim)
            else:
                out[path] = (m.heads, m.qk_dim, m.v_dim)
            continue
        w = dict(models.default_widths(name), **(widths or {}))
        heads = w[f"{layer}.heads"]
        rows = sd[key].shape[0]
        if widths and f"{layer}.qk_dim" in widths:
            out[path] = (heads, w[f"{layer}.qk_dim"], w[f"{layer}.v_dim"])
        elif rows % (3 * heads):
            raise ValueError(f"{name}: {key} has {rows} rows, not divisible into q/k/v of {heads} heads; "
                             f"pass widths with {layer}.heads/qk_dim/v_dim")
        else:
            out[path] = (heads, rows // (3 * heads), rows // (3 * heads))
    return out


def _to_flax_leaf(kind: str, t: np.ndarray, layout: tuple[int, int, int] | None, key: str) -> np.ndarray:
    if kind == "conv":
        if t.ndim != 4:
            raise ValueError(f"{key}: expected a rank-4 conv weight, got shape {t.shape}")
        return np.ascontiguousarray(t.transpose(2, 3, 1, 0))
    if kind == "linear":
        if t.ndim != 2:
            raise ValueError(f"{key}: expected a rank-2 linear weight, got shape {t.shape}")
        return np.ascontiguousarray(t.T)
    if kind == "copy":
        return t
    h, dq, dv = layout
    part, leaf = kind.split("_")
    if part == "out":
        if leaf == "bias":
            return t
        d = t.shape[0]
        if t.shape[1] != h * dv:
            raise ValueError(f"{key}: shape {t.shape} does not match {h} heads x v_dim {dv}")
        return np.ascontiguousarray(t.reshape(d, h, dv).transpose(1, 2, 0))
    start = {"query": 0, "key": h * dq, "value": 2 * h * dq}[part]
    size = h * (dv if part == "value" else dq)
    if t.shape[0] != 2 * h * dq + h * dv:
        raise ValueError(f"{key}: {t.shape[0]} rows, expected {2 * h * dq + h * dv} "
                         f"({h} heads, qk_dim {dq}, v_dim {dv})")
    sl = t[start:start + size]
    d = size // h
    if leaf == "bias":
        return np.ascontiguousarray(sl.reshape(h, d))
    return np.ascontiguousarray(sl.reshape(h, d, -1).transpose(2, 0, 1))


# A torch.save file is a zip archive (torch >= 1.6) or, in the legacy format, a pickle that
# starts with torch's magic number 0x1950a86a20f9469cfc6c (pickle protocol 2, LONG1).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a ``.pt``/``.pth`` file, read with ``weights_only=True``.

    Anything else raises a one-line ``ValueError`` that says what the file is: missing,
    empty, not a torch file (random bytes, text, a plain Python pickle), a truncated or
    corrupt archive, or a pickled object (a whole ``nn.Module``, a class of its own) that
    weights-only loading refuses because unpickling it would run code. The remedy offered
    is always to re-save the weights (``torch.save(model.state_dict(), path)``), never to
    unpickle untrusted code.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"torch file {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"torch file {path}: is a directory, not a file written by torch.save")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as e:
        raise ValueError(f"torch file {path}: not readable ({e.strerror})") from None
    resave = "re-save the weights with torch.save(model.state_dict(), path)"
    if not head:
        raise ValueError(f"torch file {path}: empty file")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"torch file {path}: truncated or corrupt zip archive (the end of the "
                             f"archive is missing or damaged); copy or save it again")
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                raise ValueError(f"torch file {path}: a zip archive, but not one written by "
                                 f"torch.save (no data.pkl inside); {resave}")
    elif not head.startswith(_LEGACY_MAGIC):
        what = ("starts like a Python pickle but is not a torch.save file" if head[:1] == b"\x80"
                else f"not a torch.save file (neither a zip archive nor torch's legacy format; "
                     f"starts with bytes {head[:4].hex()})")
        raise ValueError(f"torch file {path}: {what}; {resave}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError...
        text = str(e)
        m = _GLOBAL.search(text)
        if m:
            raise ValueError(f"torch file {path}: holds a pickled object that needs {m.group(1)} "
                             f"to load, not a plain state_dict; weights-only loading refuses it "
                             f"because unpickling it would run code: {resave}") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()
                      and "weights_only" not in ln and "Weights only" not in ln), type(e).__name__)
        first = first.split(". ")[0].rstrip(".")[:200]
        raise ValueError(f"torch file {path}: corrupt ({type(e).__name__}: {first}); "
                         f"copy or save it again") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (mapping of tensors), got {type(obj).__name__}")
    return dict(obj)


def torch_to_flax(name: str, source: nn.Module | Mapping[str, torch.Tensor], *,
                  widths: Mapping[str, int] | None = None, rename: Rules = None) -> tuple[Any, dict]:
    """Convert a torch model (or its ``state_dict``) of zoo model ``name`` to Flax.

    Widths, classes and input channels are read off the tensors, so pruned models
    convert too (a ViT given as a bare ``state_dict`` with non-default head counts needs
    ``widths``). ``rename``: key-renaming rules for state_dicts named otherwise than
    torchvision (module docstring). Returns ``(flax_model, variables)`` with numpy
    leaves of the source dtype; every missing, unexpected or mis-shaped key is named in
    one ``ValueError`` first.
    """
    sd = source.state_dict() if isinstance(source, nn.Module) else source
    sd = rename_keys({k: _numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in sd.items()},
                     rename)
    layouts = _attention_layouts(name, source, sd, widths)
    default = models.build(name)
    structure = _flat(jax.eval_shape(lambda: models.init(default, jax.random.key(0),
                                                         models.input_shape(name, 1))))
    converted, used, missing, bad = {}, set(), [], []
    torch_key = {}
    for path, leaf in structure.items():
        key, kind = _torch_key(path, leaf.ndim)
        torch_key[path] = key
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        layout = layouts.get(key.rsplit(".", 2)[0] if "out_proj" in key else key.rsplit(".", 1)[0])
        try:
            converted[path] = _to_flax_leaf(kind, sd[key], layout, key)
        except ValueError as e:
            bad.append(str(e))
    bn_counters = {k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in used if k.endswith("running_mean")}
    unexpected = sorted(set(sd) - used - bn_counters)
    if not missing and not bad:
        bad.extend(_shape_conflicts(name, converted, torch_key, source))
    problems = []
    if missing:
        problems.append("missing key(s) " + ", ".join(repr(k) for k in sorted(dict.fromkeys(missing))))
    if unexpected:
        problems.append("unexpected key(s) " + ", ".join(repr(k) for k in unexpected))
    if bad:
        problems.append("mis-shaped " + "; ".join(bad))
    if problems:
        raise ValueError(f"{name}: torch state_dict does not match: " + "; ".join(problems))
    variables = _unflat(converted)
    found_widths, nc, ic = models.infer_widths(name, variables)
    kw = {"scale_dim": _scale_dim(name, source)} if models.get_entry(name).family == "vit" else {}
    return models.build(name, widths=found_widths, num_classes=nc, in_channels=ic, **kw), variables


def _shape_conflicts(name: str, converted: Mapping, torch_key: Mapping, source) -> list[str]:
    """Every converted leaf whose shape does not fit the model at the widths most of
    the arrays agree on (each width entry's most common size), as torch keys."""
    out = []
    widths: dict[str, int] = {}
    for entry, axes in models.width_axes(name).items():
        sizes = [(converted[(col,) + path].shape[axis], (col,) + path) for col, path, axis in axes
                 if (col,) + path in converted]
        if not sizes:
            continue
        common = collections.Counter(s for s, _ in sizes).most_common(1)[0][0]
        widths[entry] = common
    nc, ic = widths.pop("@num_classes", None), widths.pop("@in_channels", None)
    kw = {"scale_dim": _scale_dim(name, source)} if models.get_entry(name).family == "vit" else {}
    try:
        model = models.build(name, widths=widths, num_classes=nc, in_channels=ic, **kw)
    except ValueError as e:
        return [str(e)]
    expected = _flat(jax.eval_shape(lambda: models.init(model, jax.random.key(0),
                                                        models.input_shape(name, 1, in_channels=ic))))
    for path, leaf in expected.items():
        got = converted[path].shape
        if tuple(got) != tuple(leaf.shape):
            out.append(f"{torch_key[path]!r} converts to shape {tuple(got)}, the model expects {tuple(leaf.shape)}")
    return out


def _scale_dim(name: str, source: Any) -> int:
    if isinstance(source, nn.Module):
        for m in source.modules():
            if isinstance(m, nn.MultiheadAttention):
                return m.head_dim
            if hasattr(m, "scale_dim"):
                return m.scale_dim
    w = models.default_widths(name)
    return w["encoder_layer_0.qk_dim"]


def flax_to_state_dict(name: str, variables: Mapping) -> "collections.OrderedDict[str, torch.Tensor]":
    """The torch ``state_dict`` of Flax ``variables`` of zoo model ``name`` (any widths)."""
    flat = _flat({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    pieces: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for path, leaf in flat.items():
        a = np.asarray(leaf)
        key, kind = _torch_key(path, a.ndim)
        if kind == "conv":
            out[key] = a.transpose(3, 2, 0, 1)
        elif kind == "linear":
            out[key] = a.T
        elif kind == "copy":
            out[key] = a
        elif kind == "out_kernel":
            h, dv, d = a.shape
            out[key] = a.transpose(2, 0, 1).reshape(d, h * dv)
        elif kind == "out_bias":
            out[key] = a
        else:
            part, leafname = kind.split("_")
            flat_part = a.reshape(-1) if leafname == "bias" else a.transpose(1, 2, 0).reshape(-1, a.shape[0])
            pieces.setdefault(key, {})[part] = flat_part
        if path[0] == "batch_stats" and path[-1] == "mean":
            out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.array(0, dtype=np.int64)
    for key, parts in pieces.items():
        out[key] = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
    return collections.OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in sorted(out.items()))  # copies: writable


def attention_layouts_from_flax(variables: Mapping, scale_dim: int) -> dict[str, tuple[int, int, int, int]]:
    """torch attention path -> (heads, qk_dim, v_dim, scale_dim) from the Flax kernels."""
    out = {}
    for path, leaf in _flat(variables.get("params", {})).items():
        if len(path) >= 3 and path[-3] == "self_attention" and path[-2] in ("query", "value") and path[-1] == "kernel":
            mod = ".".join(path[:-2])
            h, qk, v, s = out.get(mod, (0, 0, 0, scale_dim))
            if path[-2] == "query":
                h, qk = leaf.shape[1], leaf.shape[2]
            else:
                v = leaf.shape[2]
            out[mod] = (h, qk, v, s)
    return out


def flax_to_torch(name: str, variables: Mapping, *, scale_dim: int | None = None) -> nn.Module:
    """A torch module (torchvision-structured, eval mode) holding Flax ``variables``.

    Works at any widths: the torch reference is rebuilt at the sizes the arrays have,
    then loaded with ``strict=True``. float64 variables give a float64 module.
    """
    sd = flax_to_state_dict(name, variables)
    _, nc, ic = models.infer_widths(name, variables)
    model = build_torch(name, num_classes=nc, in_channels=ic)
    dtype = next(v.dtype for k, v in sd.items() if v.is_floating_point())
    model = model.to(dtype)
    if scale_dim is None:
        scale_dim = models.default_widths(name).get("encoder_layer_0.qk_dim", 0)
    resize_to(model, {k: tuple(v.shape) for k, v in sd.items()},
              attention_layouts_from_flax(variables, scale_dim))
    model = model.to(dtype)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()
