"""``check_writable_folder(path, key)``: predict's and export's output folder, checked before any work
so that a folder the tool cannot write (a file of that name, no permission, a read-only disk) is a
one-line :class:`ConfigError` naming the config key, not a traceback after the model ran."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from panfpn.utils.errors import ConfigError


def check_writable_folder(path: str | os.PathLike, key: str) -> None:
    """ConfigError naming config key ``key`` unless ``path`` is a folder a file can be written in,
    or could be created as one: a probe file is written and removed in it, or in its nearest
    existing parent (nothing is created, so a later refusal leaves no empty folder behind)."""
    folder = Path(path).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise ConfigError(f"config key '{key}': {existing} is a file, not a folder; choose another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"config key '{key}': cannot write into {existing} ({type(e).__name__}: "
                          f"{e.strerror or e}); choose another folder") from None
