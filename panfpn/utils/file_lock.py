"""An exclusive, non-blocking ``flock`` on a lock file that its holder removes when it releases it:
the primitive of training's run-folder lock and evaluation's fill lock.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock is never stale by
itself; a holder that removes the file on release can race a process that opened it just before,
which must then lock the new file, not the removed one (:func:`locked_fd` checks the inode).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

# flock errors that mean "this file system cannot lock" (e.g. NFS mounted with nolock), not "locked".
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def locked_fd(path: Path) -> int | None:
    """A descriptor of ``path`` (created when missing) holding an exclusive ``flock`` on it; None
    when other processes replaced the file under every one of ten tries. BlockingIOError when a
    live process holds the lock; an OSError with an errno in :data:`UNSUPPORTED` when the file
    system cannot lock (the caller says so)."""
    for _ in range(10):  # the holder may remove the file between our open and our flock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        if _same_file(path, fd):
            return fd
        os.close(fd)
    return None


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one a releasing holder removed)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


__all__ = ["UNSUPPORTED", "locked_fd"]
