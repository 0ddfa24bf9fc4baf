"""Failed writes, told in one line.

A full disk, a quota, a read-only or vanished mount or a file-size limit make a save fail
part-way. Every writer of the main job writes to a temporary name and renames it into
place only when complete (stage records, exported models, orbax's checkpoints), so the
previous version survives; :class:`WriteError` says which file failed, why, and what is
still intact. orbax/tensorstore report such failures as ``ValueError``s carrying the OS
error code in their text, which :func:`write_failure` recognizes too.
"""

from __future__ import annotations

import errno
import os
import re

# errno values that mean "the storage refused the write" rather than a bug.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO,
                  errno.EACCES, errno.EPERM, errno.ENOENT, errno.ESTALE}
_TS_CODE = re.compile(r"os_error_code='?(\d+)")


class WriteError(OSError):
    """A save failed; the message names the file, the reason and what is intact."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def write_failure(exc: BaseException) -> str | None:
    """The OS reason (e.g. 'No space left on device') if ``exc`` or its causes is a
    storage write failure, else None."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e.strerror or os.strerror(e.errno)
        m = _TS_CODE.search(str(e))
        if m and int(m.group(1)) in STORAGE_ERRNOS:
            return os.strerror(int(m.group(1)))
        e = e.__cause__ or e.__context__
    return None
