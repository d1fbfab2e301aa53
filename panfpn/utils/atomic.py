"""Atomic file writes: a temp file in the target folder, then ``os.replace``.

Readers (and a crash mid-write) never see half a file: either the old file or the new one.
Every checkpoint, prediction PNG/JSON and overlay in panfpn is written through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, mode: str = "wb",
                 fsync: bool = False) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``.

    ``fsync`` flushes to disk before the rename (checkpoints: survive a power cut, not just a crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f), mode="w")


def save_image_atomic(path: str | os.PathLike, array: np.ndarray, fmt: str = "PNG", **options: Any) -> Path:
    """Save a uint8 ``[H, W, 3]`` (or ``[H, W]``) array with Pillow in format ``fmt``."""
    from PIL import Image

    return atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt, **options))
