"""Atomic file writes: a temp file in the target folder, then ``os.replace``.

Readers (and a crash mid-write) never see half a file: either the old file or the new one.
Every checkpoint, prediction PNG/JSON and overlay in panfpn is written through here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np


def _default_mode() -> int:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, mode: str = "wb",
                 fsync: bool = False) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``.

    ``fsync`` flushes to disk before the rename (checkpoints: survive a power cut, not just a crash).
    """

    def write_file(tmp: Path) -> None:
        with open(tmp, mode) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    return atomic_write_path(path, write_file)


class AtomicWriteError(OSError):
    """A write through this module failed (disk full, permissions, I/O error): the message names
    the file, the OS error and that the previous file was left as it was. ``errno`` and
    ``filename`` are the OS error's errno and the target file."""

    def __str__(self) -> str:
        return str(self.strerror)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: itself, or the one a RuntimeError was raised from or while
    handling (torch.save reports a failed write as ``RuntimeError: unexpected pos ...``)."""
    seen = set()
    while isinstance(err, RuntimeError) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err if isinstance(err, OSError) else None


def _write_error(path: Path, err: OSError, step: str) -> AtomicWriteError:
    try:
        existed = path.exists()
    except OSError:  # e.g. no permission to look into the folder
        existed = False
    previous = f"the previous {path.name} is unchanged" if existed else f"no {path.name} was written"
    reason = f"[Errno {err.errno}] {err.strerror}" if err.errno is not None else str(err)
    return AtomicWriteError(err.errno, f"cannot write {path} ({step}): {reason}; {previous}", str(path))


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], Any], *, suffix: str = ".tmp") -> Path:
    """Like :func:`atomic_write` for writers that take a file name (ONNX, torch.export):
    ``write(tmp_path)``, then rename over ``path``. ``suffix`` ends the temp name (some writers
    insist on an extension). A failure of the OS (disk full, permissions) raises AtomicWriteError
    naming ``path``; the previous ``path`` is left as it was and the temp file removed."""
    path = Path(path)
    step = "creating its folder"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        step = "creating a temp file beside it"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        step = "writing a temp file beside it"
        write(Path(tmp))
        step = "renaming the temp file over it"
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        os_err = _os_error(err)
        if os_err is None or isinstance(err, AtomicWriteError):
            raise
        raise _write_error(path, os_err, step) from err
    return path


# The temp name atomic_write_path gives ``<folder>/<target>``: ".<target>.<mkstemp's random part>.tmp".
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp")


def temp_file_target(name: str) -> str | None:
    """The file name a temp file of :func:`atomic_write_path` named ``name`` was to become; None
    when ``name`` is not such a temp file."""
    m = _TEMP_NAME.fullmatch(name)
    return m["target"] if m else None


def remove_stale_temp_files(folder: str | os.PathLike, targets: Sequence[str] = ("*",)) -> list[Path]:
    """Delete the temp files that writes killed mid-way (crash, ``kill -9``) left in ``folder``,
    for target file names matching one of the glob patterns ``targets``; returns them, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if p.is_file() and (m := _TEMP_NAME.fullmatch(p.name))
                   and any(fnmatch.fnmatchcase(m["target"], t) for t in targets))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """``obj`` as strict JSON: a NaN or infinite number is a ValueError, never the ``NaN`` /
    ``Infinity`` literals strict parsers reject (see :mod:`panfpn.utils.json_values`)."""
    text = json.dumps(obj, allow_nan=False)  # dumps: json's C encoder (dump to a file runs the Python one)
    return atomic_write(path, lambda f: f.write(text), mode="w")


def save_png_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a uint8 ``[H, W]`` or ``[H, W, 3]`` map as PNG with :func:`panfpn.utils.png.encode_png`
    (id and label maps: twice as fast as Pillow's encoder, same pixels)."""
    from panfpn.utils.png import encode_png

    data = encode_png(array)
    return atomic_write(path, lambda f: f.write(data))


def save_image_atomic(path: str | os.PathLike, array: np.ndarray, fmt: str = "PNG", **options: Any) -> Path:
    """Save a uint8 ``[H, W, 3]`` (or ``[H, W]``) array with Pillow in format ``fmt``."""
    from PIL import Image

    return atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt, **options))
