"""The workdir: one folder per stage, a ``stage.json`` when a stage has finished, the
guard that refuses to resume a workdir made with a different config, and the lock that
keeps a second run out (:mod:`hobs_jax.pipeline.lock`).

A stage that finished is skipped on rerun; one that did not resumes (training resumes
from its own checkpoints). A stage's record holds the config sections it depended on
(:data:`hobs_jax.pipeline.config.STAGE_SECTIONS`); if the current config differs in any
of them, the run stops with the differing keys instead of mixing results.

Records are written to a temporary file, flushed to disk and renamed into place: a
killed run never leaves half a record, and a failed write (full disk) leaves the
previous record intact and raises a one-line :class:`hobs_jax.errors.WriteError`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections

from hobs_jax import faults
from hobs_jax.errors import WriteError, write_failure
from hobs_jax.pipeline.config import fingerprint_view, stage_sections
from hobs_jax.pipeline.lock import WorkdirLock
from hobs_jax.train.stability import StabilityConfig

log = logging.getLogger(__name__)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fingerprint(config: ml_collections.ConfigDict, stage: str, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flattened config keys ``stage``'s result depends on: its sections and its
    upstream stages', plus ``also`` (sections a run of the stage turned out to use, e.g.
    ``finetune`` for a prune stage whose method trained through it)."""
    full = fingerprint_view(json.loads(config.to_json()))
    out = {}
    for section in (*stage_sections(stage), *also):
        out.update(_flatten({section: full[section]}))
    # Cosmetic switches never change a result; fast_depthwise changes how depthwise convs
    # are computed, not what (float rounding only), so workdirs made before it existed resume.
    return effective({k: v for k, v in out.items()
                      if not k.endswith((".progress", ".tensorboard", ".log_every", ".fast_depthwise"))})


# Options added after workdirs were made, with their defaults: at its default such a key is
# left out of fingerprints, so a workdir whose stored fingerprint predates it still resumes.
ADDED_DEFAULTS = {".stability.spike_sigmas": StabilityConfig.spike_sigmas, ".ast.reference": ""}


def effective(fp: dict[str, Any]) -> dict[str, Any]:
    """A flat fingerprint without the options of a disabled section (with ``S.ast.enabled``
    False, no other ``S.ast.*`` key can change a result, so an AST option added later, or
    changed, does not stop a workdir of a run without AST from resuming) and without the
    :data:`ADDED_DEFAULTS` keys at their defaults. Applied to stored fingerprints too,
    which may predate these rules."""
    off = [k[:-len("enabled")] for k, v in fp.items() if k.endswith(".ast.enabled") and v is False]
    return {k: v for k, v in fp.items()
            if not any(k.startswith(p) and k != p + "enabled" for p in off)
            and not any(k.endswith(suffix) and v == d for suffix, d in ADDED_DEFAULTS.items())}


def _write_json(path: str, obj: Any, fault_point: str | None = None) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file, fsync, rename); a failed
    write raises a one-line WriteError and leaves the previous file intact."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if fault_point:
            faults.point(fault_point)
        os.replace(tmp, path)  # atomic: a killed run never leaves half a record
    except OSError as e:
        reason = write_failure(e) or e.strerror or str(e)
        try:
            os.remove(tmp)
        except OSError:
            pass
        kept = "the previous version is intact" if os.path.exists(path) else "nothing was written"
        raise WriteError(f"writing {path} failed ({reason}); {kept}") from e


def check_usable(root: str) -> str:
    """The absolute workdir path, after checking, without creating anything, that it is
    (or can be created as) a writable directory; else a one-line ``ValueError`` naming
    the path and why."""
    if not root:
        raise ValueError("--workdir is empty: give a directory for the run's outputs")
    path = os.path.abspath(os.path.expanduser(root))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"workdir {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"workdir {path} is not writable (permission denied)")
        return path
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"workdir {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"workdir {path} cannot be created: {parent} is not writable "
                         f"(permission denied)")
    return path


class Workdir:
    """Paths and stage records under ``root`` (created unless ``create=False``; then
    :meth:`open` creates it and takes the lock)."""

    def __init__(self, root: str, *, create: bool = True):
        self.root = os.path.abspath(root)
        self.lock = WorkdirLock(self.root)
        self.created = False
        if create:
            os.makedirs(self.root, exist_ok=True)

    def open(self) -> Workdir:
        """Create the directory if needed and take the lock (:mod:`~hobs_jax.pipeline.lock`);
        one-line ``ValueError`` if either fails."""
        check_usable(self.root)
        self.created = not os.path.isdir(self.root)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise ValueError(f"workdir {self.root} cannot be created ({e.strerror})") from None
        try:
            self.lock.acquire()
        except BaseException:
            self.close(remove_if_new=True)
            raise
        return self

    def close(self, *, remove_if_new: bool = False) -> None:
        """Release the lock. ``remove_if_new``: a run that wrote nothing yet leaves no
        trace: the lock file and (if this run created it and it is empty) the directory
        go away again."""
        remove = remove_if_new and self.lock.created
        self.lock.release(remove=remove)
        if remove_if_new and self.created:
            try:
                os.rmdir(self.root)  # only if empty
            except OSError:
                pass

    def stage_dir(self, stage: str) -> str:
        path = os.path.join(self.root, stage)
        os.makedirs(path, exist_ok=True)
        return path

    def record_path(self, stage: str) -> str:
        return os.path.join(self.root, stage, "stage.json")

    def done(self, stage: str) -> dict | None:
        """``stage``'s record, or None if it has not finished (an unreadable record, which
        atomic writes never produce but a damaged disk or a hand edit might, counts as not
        finished: the stage runs again)."""
        path = self.record_path(stage)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError) as e:
            log.warning("%s is unreadable (%s); stage %s runs again", path, e, stage)
            return None
        return rec if isinstance(rec, dict) and "outputs" in rec else None

    def started_path(self, stage: str) -> str:
        return os.path.join(self.root, stage, "started.json")

    def start(self, stage: str, config: ml_collections.ConfigDict, also: tuple[str, ...] = ()) -> None:
        """Mark ``stage`` as started with ``config``: the checkpoints and search state it
        leaves if stopped belong to this config (:meth:`check_compatible`); ``also``: the
        sections it was found to depend on beyond its own (marked again when found). A
        resumed stage keeps the sections an earlier run of it found (its saved state still
        depends on them; :meth:`check_compatible` has already matched them)."""
        self.stage_dir(stage)
        try:
            with open(self.started_path(stage)) as f:
                earlier = json.load(f).get("also", [])
        except (OSError, ValueError, AttributeError):
            earlier = []
        also = tuple(dict.fromkeys((*earlier, *also)))
        _write_json(self.started_path(stage), {"stage": stage, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "fingerprint": fingerprint(config, stage, also), "also": list(also)})

    def unstart(self, stage: str) -> None:
        """Drop ``stage``'s start mark (the stage failed with an error rather than stopping),
        and its folder when nothing else is in it: a stage that failed before writing
        anything leaves nothing behind."""
        try:
            os.remove(self.started_path(stage))
            os.rmdir(os.path.join(self.root, stage))  # only when empty
        except OSError:
            pass

    def check_compatible(self, config: ml_collections.ConfigDict, stages: tuple[str, ...]) -> None:
        """Raise if a finished stage was made with different values of its config keys, or
        if a stage that was stopped before it finished (its training checkpoints, search
        checkpoints, measured timings would be resumed) was started with different ones."""
        for stage in stages:
            rec = self.done(stage)
            partial = False
            if rec is None:
                path = self.started_path(stage)
                if not os.path.exists(path):
                    continue
                try:
                    with open(path) as f:
                        rec = json.load(f)
                except (OSError, ValueError):
                    continue  # atomic writes never leave half a file; a hand-damaged one is not evidence
                partial = True
            now = fingerprint(config, stage, tuple(rec.get("also", ())))
            then = effective(rec.get("fingerprint", {}))
            diff = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
            if diff:
                shown = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
                more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
                if partial:
                    raise ValueError(f"workdir {self.root} holds stage '{stage}' stopped before it finished, started "
                                     f"with another config ({shown}{more}); its saved state would be resumed: "
                                     f"restore those values, use a fresh --workdir, or remove "
                                     f"{os.path.join(self.root, stage)} to start the stage over")
                raise ValueError(f"workdir {self.root} holds stage '{stage}' made with another config "
                                 f"({shown}{more}); use a fresh --workdir or restore those values")

    def finish(self, stage: str, config: ml_collections.ConfigDict, outputs: dict,
               seconds: float, also: tuple[str, ...] = ()) -> dict:
        rec = {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds,
               "fingerprint": fingerprint(config, stage, also), "outputs": outputs}
        if also:
            rec["also"] = list(also)
        self.stage_dir(stage)
        _write_json(self.record_path(stage), rec, fault_point="record.write")
        return rec

    def write_json(self, name: str, obj: Any) -> str:
        path = os.path.join(self.root, name)
        _write_json(path, obj)
        return path
