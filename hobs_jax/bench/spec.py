"""Which networks a suite run times: zoo models by name (at any widths, random weights:
latency does not depend on the values) and saved, possibly pruned, models (directories
written by :func:`hobs_jax.export.save`)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One network to benchmark.

    Exactly one of ``zoo`` (a registry name) and ``path`` (a saved model directory).

    Attributes:
      label: the name in tables and plots (default: the zoo name or the directory's name).
      widths: zoo only: entry -> channels (a partial mapping; the rest keep defaults).
      num_classes, in_channels: zoo only (defaults: the registry's).
      input_shape: ``(H, W, C)`` of one example (default: the zoo's input size, or for a
        saved model its recorded input shape or its zoo model's).
      seed: zoo only: the seed of the random weights.
      onnx: an ONNX file of this network for ONNX Runtime/TensorRT instead of exporting
        it with :func:`hobs_jax.export.to_onnx` (it is verified like any other runtime).
    """

    label: str
    zoo: str | None = None
    path: str | None = None
    widths: Mapping[str, int] | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_shape: tuple[int, int, int] | None = None
    seed: int = 0
    onnx: str | None = None

    def __post_init__(self):
        if (self.zoo is None) == (self.path is None):
            raise ValueError(f"model {self.label!r}: give exactly one of a zoo name and a saved path")
        if not self.label or any(c in self.label for c in "|/\\,\n"):
            raise ValueError(f"model label {self.label!r}: must be non-empty without | / \\ , or newlines")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
                raise ValueError(f"model {self.label!r}: input_shape {self.input_shape!r} must be "
                                 "three positive ints (H, W, C)")
            object.__setattr__(self, "input_shape", shape)

    @classmethod
    def from_zoo(cls, name: str, *, label: str | None = None, widths: Mapping[str, int] | None = None,
                 num_classes: int | None = None, in_channels: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, seed: int = 0) -> ModelSpec:
        from hobs_jax import models

        models.get_entry(name)  # one-line error for an unknown name
        if input_shape is not None and in_channels is None:
            in_channels = int(tuple(input_shape)[2])  # the input decides the first layer's channels
        return cls(label=label or name, zoo=name, widths=dict(widths) if widths else None,
                   num_classes=num_classes, in_channels=in_channels, input_shape=input_shape, seed=seed)

    @classmethod
    def from_saved(cls, path: str | os.PathLike, *, label: str | None = None,
                   input_shape: tuple[int, int, int] | None = None, onnx: str | None = None) -> ModelSpec:
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise ValueError(f"no saved model at {path} (not a directory)")
        if onnx is not None and not os.path.isfile(onnx):
            raise ValueError(f"model {label or os.path.basename(path)!r}: no ONNX file at {onnx}")
        return cls(label=label or os.path.basename(path.rstrip(os.sep)), path=path,
                   input_shape=input_shape, onnx=None if onnx is None else os.path.abspath(onnx))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = dict(self.widths) if self.widths else None
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


def _shape(text: str, what: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{what}: input {text!r} must be HxWxC (e.g. 28x28x1)") from None
    if len(dims) != 3:
        raise ValueError(f"{what}: input {text!r} must be HxWxC (e.g. 28x28x1)")
    return dims


def parse_model(text: str) -> ModelSpec:
    """A ``--model`` argument: ``NAME_OR_DIR[:key=value[,key=value...]]``.

    Keys: ``label``; ``input`` (HxWxC, e.g. ``28x28x1``); zoo models also ``classes``,
    ``channels``, ``seed``, ``widths`` (a JSON file of entry -> channels, or a saved model
    directory whose widths to take), ``scale`` (every width times this factor, rounded, at
    least 1) and ``round`` (every width rounded up to a multiple of this); saved models also
    ``onnx``. Zoo models get random weights (latency does not depend on them).
    Examples: ``resnet20:input=28x28x1,scale=0.5``, ``runs/r20/prune/model:label=pruned``,
    ``resnet20:widths=runs/r20/prune/model,round=8,label=pruned_r8``.
    """
    from hobs_jax import models

    head, opts = text, {}
    if ":" in text:
        h, _, tail = text.rpartition(":")
        if "=" in tail and not os.path.isdir(text):
            head = h
            for item in tail.split(","):
                key, eq, val = item.partition("=")
                if not eq or not key.strip():
                    raise ValueError(f"--model {text!r}: option {item!r} is not key=value")
                opts[key.strip()] = val.strip()
    label = opts.pop("label", None)
    shape = _shape(opts.pop("input"), f"--model {text!r}") if "input" in opts else None
    if os.path.isdir(head):
        onnx = opts.pop("onnx", None)
        if opts:
            raise ValueError(f"--model {text!r}: unknown option {sorted(opts)[0]!r} for a saved model "
                             "(use label, input, onnx)")
        return ModelSpec.from_saved(head, label=label, input_shape=shape, onnx=onnx)
    if head not in models.MODELS:
        raise ValueError(f"--model {head!r}: neither a saved model directory nor a zoo model "
                         f"({', '.join(models.list_models())})")
    kw: dict = {}
    try:
        for key, conv in (("classes", "num_classes"), ("channels", "in_channels"), ("seed", "seed")):
            if key in opts:
                kw[conv] = int(opts.pop(key))
        widths = None
        if "widths" in opts:
            src = opts.pop("widths")
            with open(os.path.join(src, "meta.json") if os.path.isdir(src) else src) as f:
                doc = json.load(f)
            widths = {str(k): int(v) for k, v in (doc["widths"] if os.path.isdir(src) else doc).items()}
        if "scale" in opts:
            s = float(opts.pop("scale"))
            if not s > 0:
                raise ValueError("scale must be > 0")
            base = dict(models.default_widths(head), **(widths or {}))
            widths = {k: max(1, round(v * s)) for k, v in base.items()}
        if "round" in opts:
            q = int(opts.pop("round"))
            if q < 1:
                raise ValueError("round must be >= 1")
            base = dict(models.default_widths(head), **(widths or {}))
            widths = {k: v if k.endswith(".heads") else -(-v // q) * q for k, v in base.items()}
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"--model {text!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if opts:
        raise ValueError(f"--model {text!r}: unknown option {sorted(opts)[0]!r} for a zoo model "
                         "(use label, input, classes, channels, seed, widths, scale, round)")
    return ModelSpec.from_zoo(head, label=label, widths=widths, input_shape=shape, **kw)
