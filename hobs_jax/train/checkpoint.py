"""Checkpoints with orbax ``CheckpointManager``: periodic, keep-K, async, resumable.

A checkpoint at step ``s`` holds two items:
  * 'state': the whole :class:`TrainState` (params, batch_stats, optimizer state, step,
    RNG key, lr scale, skip counter), saved sharded as it lives on the mesh;
  * 'meta': JSON: the data iterator position, the stability monitor, early-stopping
    bookkeeping and anything else the loop needs to continue exactly.

Saves are asynchronous (training continues while the files are written); ``wait()``
blocks until they are on disk and must run before the process exits. Orbax writes each
step to a temporary directory and renames it when complete, so a process killed mid-save
leaves no half checkpoint behind; a checkpoint that still fails to restore (truncated or
corrupted files) is skipped with a warning in favour of the previous one. A save that
fails for lack of space or any other storage error raises a one-line
:class:`hobs_jax.errors.WriteError` naming the step and the newest complete checkpoint,
which is left intact.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from hobs_jax import faults
from hobs_jax.errors import WriteError, write_failure

log = logging.getLogger(__name__)


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for (state, meta) checkpoints.

    Args:
      directory: where step directories go (created).
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread.
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
        self._unreadable: set[int] = set()
        self._saving: int | None = None  # the step whose (async) save may still fail

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving (async); a step that is already saved is left alone.

        A step that failed to restore earlier (see :meth:`restore`) is replaced.
        """
        if step in self._unreadable:
            self.wait()
            self.manager.delete(step)
            self._unreadable.discard(step)
        if step in self.manager.all_steps():
            return
        with _WriteFailure(self, step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._saving = step
        faults.point("checkpoint.save", step)

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        with _WriteFailure(self, self._saving):
            self.manager.wait_until_finished()
        self._saving = None

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[int, Any, dict] | None:
        """Restores ``step`` (default: the newest that restores cleanly).

        Args:
          abstract_state: a TrainState of ``jax.ShapeDtypeStruct`` with shardings (the
            restored arrays get these shardings).
          step: a specific step (no fallback), or None.
        Returns:
          (step, state, meta), or None when there is no checkpoint.
        """
        self.wait()
        candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        for s in candidates:
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return s, restored["state"], dict(restored["meta"])
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                if step is not None:
                    raise
                self._unreadable.add(s)
                log.warning("checkpoint step %d in %s does not restore (%s: %s); falling back to "
                            "the previous one", s, self.directory, type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "")
        return None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


class _WriteFailure:
    """Turns a storage failure inside orbax into a one-line :class:`WriteError`."""

    def __init__(self, ckpt: Checkpointer, step: int | None):
        self.ckpt, self.step = ckpt, step

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        reason = write_failure(exc) if exc is not None and not isinstance(exc, WriteError) else None
        if reason is None:
            return False
        failed = self.ckpt._saving if self.ckpt._saving is not None else self.step
        self.ckpt._saving = None
        intact = [s for s in _finished_steps(self.ckpt.directory) if s != failed]
        kept = (f"the previous checkpoint (step {intact[-1]}) is intact" if intact
                else "there is no earlier checkpoint")
        raise WriteError(f"saving checkpoint step {failed} in {self.ckpt.directory} failed "
                         f"({reason}); {kept}") from exc


def _finished_steps(directory: str) -> list[int]:
    """Steps with a finalized checkpoint directory (orbax renames ``<step>.orbax-checkpoint-
    tmp`` to ``<step>`` when a save completes)."""
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except OSError:
        return []


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for :meth:`Checkpointer.restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
