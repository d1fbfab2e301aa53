"""An evaluation's prediction folders filled under ``<run dir>/.partial_predictions/`` and renamed
into place, each whole, once every rank has written every image and the metrics are computed.

cityscapesScripts' pixel- and instance-level scripts walk every folder below ``CITYSCAPES_RESULTS``
(``os.walk``: hidden ones too) and score each ``<city>_<seq>_<frame>*`` file they find; an evaluation
killed outright (SIGKILL, the out-of-memory killer, a power cut) runs no cleanup, so a folder it was
filling in place held a partial set that the scripts scored as the whole. The folders are therefore
filled in a hidden folder of the run folder, beside and never inside the folders the scripts are
pointed at (``semantic/``, ``predictions/``, ``predictions/cityscapes_instances/``), with the same
layout below it (``predictions/panoptic_pred/``, ``predictions/panoptic_pred.json``,
``predictions/cityscapes_instances/``, ``semantic/``). Rank 0 renames each folder into place (one
``rename`` each, after ``os.sync`` so that a power cut cannot leave renamed folders of empty files),
``predictions/panoptic_pred.json`` last. What a killed evaluation left there is removed by the next
one when it starts (logged with its count); a file of another kind that was in a folder being filled
(a user's, moved aside with the folder) is put back. What would make the renames fail at the end
(another file system, a file or link in the way, no write access) is refused before anything is
evaluated (:func:`check_renamable`), and one evaluation at a time fills a run folder (:func:`fill_lock`);
what gets in the way during the run (a folder with files made where one goes) keeps the complete
folders here (:class:`PredictionsKeptAside`), for the user to move, or the next evaluation to remove.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from panfpn.utils.atomic import temp_file_target
from panfpn.utils.errors import ConfigError
from panfpn.utils.file_lock import UNSUPPORTED, locked_fd

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial_predictions"  # below the run folder; holds the folders being filled
FILL_LOCK = ".partial_predictions.lock"  # beside it: flock'd by the evaluation filling it


def partial_dir(out_dir: str | Path) -> Path:
    """The folder an evaluation into ``out_dir`` fills its prediction folders in."""
    return Path(out_dir) / PARTIAL_DIR


def prediction_files(folder: Path, patterns: Iterable[str]) -> list[Path]:
    """The files of ``folder`` an evaluation writes: those matching ``patterns`` (``*.png``,
    ``masks/*.png``) and the temp files of their atomic writes; sorted."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(f for f in folder.glob(pattern) if f.is_file())
        sub, _, name = pattern.rpartition("/")
        if (folder / sub).is_dir():
            found.update(f for f in (folder / sub).iterdir() if f.is_file()
                         and (target := temp_file_target(f.name)) is not None and Path(target).match(name))
    return sorted(found)


def remove_empty_folders(root: Path) -> None:
    """Remove ``root`` and the folders below it that hold no file, deepest first; a folder that
    holds one is kept (also one that another rank of a stopped evaluation, cleaning up at the same
    time, wrote a file into since: that rank removes its own files, the next evaluation the rest),
    one that another rank removed first is skipped."""
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(Path(entry[0]).parts)):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def put_back(aside: Path, folder: Path, patterns: Iterable[str]) -> int:
    """Move the files of ``aside`` that are not prediction files (a user's, moved aside with their
    folder while it was filled) back to the same place below ``folder``; returns their count. A
    name taken there already is a ConfigError naming both files."""
    keep = set(prediction_files(aside, patterns))
    moved = 0
    for path in sorted(p for p in aside.rglob("*") if p.is_file() and p not in keep):
        target = folder / path.relative_to(aside)
        if target.exists():  # a ConfigError: tools/eval.py's one line, exit 2 (the fix is the user's)
            raise ConfigError(f"cannot put {path} back into {folder}: {target} exists; move one of the two "
                              f"and run the evaluation again")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
        moved += 1
    return moved


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (symbolic links followed)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_renamable(out_dir: str | Path, folders: Iterable[str]) -> None:
    """ConfigError naming the path, before anything is moved or evaluated, when one of ``folders``
    (paths below the run folder) cannot be filled aside and renamed into place: a file or a symbolic
    link where the folder goes (the rename would fail, or replace the link instead of filling its
    target), a folder on another file system than the run folder (``predictions/`` a link to another
    disk: a rename cannot cross file systems, EXDEV, and an evaluation's predictions would be lost
    at its very end), or one this process cannot write."""
    out_dir = Path(out_dir)
    if partial_dir(out_dir).is_symlink() or (partial_dir(out_dir).exists() and not partial_dir(out_dir).is_dir()):
        raise ConfigError(f"{partial_dir(out_dir)} is a symbolic link or a file: tools/eval.py fills its prediction "
                          "folders in that folder of its own and removes what a killed evaluation left there; "
                          "remove it")
    root = _nearest_existing(partial_dir(out_dir))
    device = os.stat(root).st_dev
    for folder in folders:
        path = out_dir
        for part in Path(folder).parts:
            path = path / part
            if path.is_symlink() and path == out_dir / folder:
                raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}): tools/eval.py fills {folder}/ "
                                  f"in {partial_dir(out_dir)} and renames it into place, which would replace the link; "
                                  "remove the link (or link the whole run folder, hydra.run.dir, instead)")
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{path} is a file where tools/eval.py writes the folder {folder}/: move it away "
                                  "or evaluate into another hydra.run.dir")
        parent = _nearest_existing((out_dir / folder).parent)
        err = _rename_probe(root, parent) if os.stat(parent).st_dev == device else OSError(errno.EXDEV, "")
        if err is not None and err.errno == errno.EXDEV:  # also a bind mount of the same disk
            raise ConfigError(f"{parent} is on another file system than {root} (a symbolic link to another disk, "
                              f"a mount?): tools/eval.py fills {folder}/ in {partial_dir(out_dir)} and renames it "
                              "into place, which cannot cross file systems; keep the prediction folders in the run "
                              "folder or link the whole run folder (hydra.run.dir) to that disk")
        if err is not None:
            raise ConfigError(f"cannot rename a folder from {root} into {parent} ({err.strerror or err}): tools/eval.py "
                              f"fills {folder}/ in {partial_dir(out_dir)} and renames it into place; make both "
                              "writable or evaluate into another hydra.run.dir")


def _rename_probe(root: Path, parent: Path) -> OSError | None:
    """What renaming a folder from ``root`` into ``parent`` gives, tried with an empty one made for it
    and removed at once: None, or the OSError (not writable, read-only, another mount: EXDEV)."""
    try:
        src = Path(tempfile.mkdtemp(prefix=".rename_probe.", dir=root))
    except OSError as err:
        return err
    try:
        os.rename(src, parent / src.name)
    except OSError as err:
        os.rmdir(src)
        return err
    os.rmdir(parent / src.name)
    return None


@contextlib.contextmanager
def fill_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<run dir>/.partial_predictions.lock`` while the block runs:
    a second evaluation into the same run folder at once would remove the first one's folders
    being filled as a killed evaluation's (and both would write into them), so it is refused, a
    ConfigError naming the folder. The kernel drops the lock when the process dies, however; the
    file is removed at the end (one a killed holder left is simply locked again)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILL_LOCK
    fd = _locked(path, out_dir)
    try:
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # before the lock is dropped: a waiting opener sees another file
            os.close(fd)


def _locked(path: Path, out_dir: Path) -> int | None:
    """The open, flock'd ``path`` (None on a file system without flock: said in a warning)."""
    try:
        fd = locked_fd(path)
    except BlockingIOError:
        raise ConfigError(f"{out_dir} is in use by another evaluation (a live process holds {path}): wait "
                          "for it to end, or evaluate into another hydra.run.dir") from None
    except OSError as err:  # NFS mounted with nolock: said, not refused
        if err.errno not in UNSUPPORTED:
            raise
        logger.warning("cannot lock %s (%s): a second evaluation into %s at once would not be refused",
                       path, err, out_dir)
        return None
    if fd is None:
        raise ConfigError(f"{path} keeps being replaced by other processes: cannot lock {out_dir}")
    return fd


def set_aside(folder: Path, aside: Path) -> bool:
    """Make ``aside`` (an empty folder or none) the folder filled in place of ``folder``: ``folder``,
    when it still holds files once emptied of predictions (a user's: kept), is moved there with them
    and renamed back at the end; else its empty folders are removed, so that the filled one can take
    its place. Returns whether it was moved."""
    remove_empty_folders(folder)
    if not folder.exists():
        return False
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, aside)  # onto an empty folder (the writers made it) or none: one step
    logger.info("moved %s (its files other than predictions) to %s while this evaluation fills it", folder, aside)
    return True


def move_into_place(out_dir: str | Path, folders: Iterable[str], last: Iterable[str]) -> list[Path]:
    """Rename each of ``folders`` (paths below the run folder) filled in :func:`partial_dir` to its
    place in ``out_dir``, then each file of ``last`` (the JSON listing a folder's PNGs), then remove
    the emptied partial folder; returns the paths put in place. Rank 0, once every rank wrote its
    files: a folder in place is complete."""
    out_dir = Path(out_dir)
    root = partial_dir(out_dir)
    moves = [(root / f, out_dir / f) for f in folders if (root / f).is_dir()]
    moves += [(root / f, out_dir / f) for f in last if (root / f).is_file()]
    if moves and hasattr(os, "sync"):
        os.sync()  # the files' data on disk before the renames that show them
    for i, (src, dst) in enumerate(moves):
        try:
            if src.is_dir():
                remove_empty_folders(dst)  # emptied when this evaluation started
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        except OSError as err:  # in the way since the start (a user's folder with files there: ENOTEMPTY)
            raise PredictionsKeptAside(_kept_aside_message(root, out_dir, moves[i:], err)) from err
    remove_empty_folders(root)
    return [dst for _, dst in moves]


class PredictionsKeptAside(ConfigError):
    """The prediction folders of an evaluation that scored every image could not be renamed into
    place (something got in the way during the run): they are kept, complete, in :func:`partial_dir`.
    A ConfigError: tools/eval.py's one line and exit 2 (the fix is the user's)."""


def _kept_aside_message(root: Path, out_dir: Path, left: list[tuple[Path, Path]], err: OSError) -> str:
    """One line: which rename failed and why, where the complete predictions are and what to do."""
    src, dst = left[0]
    names = ", ".join(str(s.relative_to(root)) for s, _ in left)
    return (f"every image was scored, but {src} could not be renamed to {dst} ({err.strerror or err}): the complete "
            f"predictions not yet in place ({names}) are kept in {root}; move {dst} away and move them into "
            f"{out_dir} by hand in that order, or run the evaluation again (it removes them and starts afresh)")


__all__ = ["FILL_LOCK", "PARTIAL_DIR", "PredictionsKeptAside", "check_renamable", "fill_lock", "move_into_place", "partial_dir",
           "prediction_files", "put_back", "remove_empty_folders", "set_aside"]
