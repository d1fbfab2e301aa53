"""Undecodable files inside a dataset: the error that names them, and the log of skipped ones.

With ``skip_bad_images`` a dataset replaces such a sample by the next good one and appends
``path<TAB>image_id<TAB>error`` to its ``bad_images_log``; an exclusive lock on the log (where the
platform has ``fcntl``) lets DataLoader workers and ranks append without writing a line twice.
"""

from __future__ import annotations

import os
from pathlib import Path

from panfpn.data.image_io import ImageReadError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a line may then be written twice
    fcntl = None  # type: ignore[assignment]


class BadImageError(ImageReadError):
    """A dataset's image or id PNG cannot be decoded; the message names the file and image id."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 reason: str | None = None, image_id: int | str | None = None) -> None:
        super().__init__(message, path=path, reason=reason)
        self.image_id = image_id


def log_line(path: str, image_id: int | str, error: str) -> str:
    """One ``path<TAB>image_id<TAB>error`` line (tabs and newlines in the error become spaces)."""
    clean = " ".join(str(error).split())
    return f"{path}\t{image_id}\t{clean}\n"


def append_bad_image(log: str | os.PathLike, path: str, image_id: int | str, error: str) -> bool:
    """Append the image's line to ``log`` unless a line for the same path and id is there.

    Returns True when the line was written. The file and its folder are created on first use.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    line = log_line(path, image_id, error)
    key = line.split("\t", 2)[:2]
    with open(log, "a+", encoding="utf-8") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            if any(existing.split("\t", 2)[:2] == key for existing in f):
                return False
            f.write(line)  # "a+": appended at the end whatever the read position
            f.flush()
            return True
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)
