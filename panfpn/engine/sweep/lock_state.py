"""Whether a run folder's ``train.lock`` is held, looked up without touching it.

A summary must not take the lock to test it (a training starting that instant would be refused),
so it reads the kernel's table of file locks, ``/proc/locks``, which names each lock's file by
device and inode. That table is of this machine only: a holder recorded on another host, or a
system without the table, cannot be told (None).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

PROC_LOCKS = Path("/proc/locks")
_FILE_ID = re.compile(r"^([0-9a-f]+):([0-9a-f]+):(\d+)$")  # major:minor (hex):inode


def lock_held(lock: Path, record: dict[str, Any] | None, proc_locks: Path = PROC_LOCKS) -> bool | None:
    """True: a process holds a lock on ``lock``; False: none does and the recorded holder ran on
    this host (it ended without removing the file: killed outright); None: cannot tell."""
    if not record or record.get("host") != socket.gethostname():
        return None
    try:
        st = os.stat(lock)
        table = proc_locks.read_text()
    except OSError:
        return None
    for line in table.splitlines():
        for field in line.split():
            match = _FILE_ID.match(field)
            if match and int(match[3]) == st.st_ino and (int(match[1], 16), int(match[2], 16)) == (
                    os.major(st.st_dev), os.minor(st.st_dev)):
                return True
    return False
