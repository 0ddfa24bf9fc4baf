"""The workdir lock: one run per workdir at a time, released by the kernel when the
holder dies.

Two runs in one workdir would each delete the other's checkpoints (orbax keeps the newest
K steps of *its* manager) and interleave stage records. A run therefore holds an
exclusive ``flock`` on ``<workdir>/.lock`` for its whole lifetime. ``flock`` belongs to
the open file, so the kernel drops it when the process exits in any way (``kill -9``
included): a lock never needs cleaning up by hand. The file holds the holder's pid, host
and start time, which a second run prints in its one-line refusal; the flock, not the
file's content, is what decides.

Multi-host runs: process 0 takes the lock and broadcasts whether it got it; the other
processes wait for that answer and stop with the same error when it did not (they never
touch the lock file, which may live on a filesystem whose locks are per host).

Cost: an open, a flock, two stats and a small write, about 0.1 ms on a local disk
(``benchmarks/workdir_lock.py``). On a filesystem without lock support (some FUSE
mounts) the run continues unlocked after a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class WorkdirLocked(ValueError):
    """Another run holds the workdir (one line naming it)."""


class WorkdirLock:
    """An exclusive lock on ``<root>/.lock``; ``root`` must exist.

    ``acquire`` raises :class:`WorkdirLocked` at once if another process holds it;
    ``created`` tells whether this process created the lock file (so a run that stops on
    a usage error before writing anything can remove it again).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.path = os.path.join(self.root, LOCK_NAME)
        self.created = False
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        import jax

        if jax.process_count() == 1:
            self._acquire_local()
            return self
        from jax.experimental import multihost_utils
        import numpy as np

        error = None
        if jax.process_index() == 0:
            try:
                self._acquire_local()
            except WorkdirLocked as e:
                error = e
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if error is not None:
            raise error
        if failed:
            raise WorkdirLocked(f"workdir {self.root} is in use by another run (process 0 could "
                                f"not take {self.path}; its error names the holder)")
        return self

    def _acquire_local(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:  # removed between the two opens: try again
                    continue
                created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _describe(_read(fd))
                    os.close(fd)
                    raise WorkdirLocked(f"workdir {self.root} is in use by another run ({holder}); "
                                        f"wait for it to finish or stop it, or use another "
                                        f"--workdir") from None
                os.close(fd)
                log.warning("workdir %s: the filesystem does not support locks (%s); running "
                            "without the one-run-per-workdir guard", self.root, e.strerror)
                return
            # A holder that removed the file before releasing it (see ``release``) leaves
            # us locking a dead inode: only a lock on the file now at the path counts.
            st = os.fstat(fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                continue
            break
        self._fd, self.created = fd, created
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock (the holder's record is cleared); ``remove`` also deletes the file
        (only sensible when this run created it and wrote nothing else)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if remove:
                os.unlink(self.path)
            else:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "its pid is not recorded yet"
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, since {holder.get('since', '?')}"
