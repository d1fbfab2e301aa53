"""``check_writable_folder(path, key)``: predict's and export's output folder, checked before any work
so that a folder the tool cannot write (a file of that name, no permission, a read-only disk) is a
one-line :class:`ConfigError` naming the config key, not a traceback after the model ran."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from panfpn.utils.errors import ConfigError


def check_writable_folder(path: str | os.PathLike, key: str) -> None:
    """Create ``path`` (and its parents) and write and remove a probe file in it; ConfigError naming
    config key ``key`` and the reason when either fails."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"config key '{key}': {folder} is a file, not a folder; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"config key '{key}': cannot write into {folder} ({type(e).__name__}: "
                          f"{e.strerror or e}); choose another folder") from None
