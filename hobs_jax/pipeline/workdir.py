"""The workdir: one folder per stage, a ``stage.json`` when a stage has finished, and the
guard that refuses to resume a workdir made with a different config.

A stage that finished is skipped on rerun; one that did not resumes (training resumes
from its own checkpoints). A stage's record holds the config sections it depended on
(:data:`hobs_jax.pipeline.config.STAGE_SECTIONS`); if the current config differs in any
of them, the run stops with the differing keys instead of mixing results.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from hobs_jax.pipeline.config import fingerprint_view, stage_sections


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fingerprint(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
    """The flattened config keys ``stage``'s result depends on."""
    full = fingerprint_view(json.loads(config.to_json()))
    out = {}
    for section in stage_sections(stage):
        out.update(_flatten({section: full[section]}))
    # Cosmetic switches never change a result.
    return {k: v for k, v in out.items() if not k.endswith((".progress", ".tensorboard", ".log_every"))}


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a record


class Workdir:
    """Paths and stage records under ``root``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)

    def stage_dir(self, stage: str) -> str:
        path = os.path.join(self.root, stage)
        os.makedirs(path, exist_ok=True)
        return path

    def record_path(self, stage: str) -> str:
        return os.path.join(self.root, stage, "stage.json")

    def done(self, stage: str) -> dict | None:
        path = self.record_path(stage)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def check_compatible(self, config: ml_collections.ConfigDict, stages: tuple[str, ...]) -> None:
        """Raise if a finished stage was made with different values of its config keys."""
        for stage in stages:
            rec = self.done(stage)
            if rec is None:
                continue
            now = fingerprint(config, stage)
            then = rec.get("fingerprint", {})
            diff = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
            if diff:
                shown = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
                more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
                raise ValueError(f"workdir {self.root} holds stage '{stage}' made with another config "
                                 f"({shown}{more}); use a fresh --workdir or restore those values")

    def finish(self, stage: str, config: ml_collections.ConfigDict, outputs: dict,
               seconds: float) -> dict:
        rec = {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds,
               "fingerprint": fingerprint(config, stage), "outputs": outputs}
        self.stage_dir(stage)
        _write_json(self.record_path(stage), rec)
        return rec

    def write_json(self, name: str, obj: Any) -> str:
        path = os.path.join(self.root, name)
        _write_json(path, obj)
        return path
