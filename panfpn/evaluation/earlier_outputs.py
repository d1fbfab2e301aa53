"""An evaluation's prediction folders cleared of an earlier evaluation's files before it writes,
and of its own files when it fails or is stopped before every image is scored.

cityscapesScripts' pixel- and instance-level scripts score every prediction file they find below
``CITYSCAPES_RESULTS`` by the frame's name, not a list of this evaluation's: an earlier evaluation
of other images into the same run folder (``eval.max_images``, another split, another model's run
of more images) left its files there, and the scripts scored them beside this run's without a
word. tools/eval.py therefore removes the files of the kinds it writes from the folders it writes
(logged with their count), and warns of those folders it does not write this time. The earlier
``predictions/panoptic_pred.json`` goes with its PNGs: it lists files no longer there.

An evaluation that fails (a bad file part way, any error) or is stopped (SIGINT / SIGTERM) left the
files of the images it had done: a partial set that the scripts, globbing the folders, would score
as the whole. The folders are filled aside (:mod:`panfpn.evaluation.partial_predictions`) and
renamed into place whole at the end, so that an evaluation killed outright (SIGKILL, the
out-of-memory killer) leaves none of its files in them either; :func:`predictions_removed_on_failure`
removes the files an evaluation that fails or is stopped had written there (logged with their
count), and the next evaluation removes those a killed one left (:func:`remove_killed_evaluations_files`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from panfpn.evaluation.partial_predictions import (PredictionsKeptAside, check_renamable, move_into_place, partial_dir,
                                                   prediction_files, put_back, remove_empty_folders, set_aside)
from panfpn.utils.stop_signals import defer_stop_signals

logger = logging.getLogger(__name__)

# folder below the run folder -> the files of an evaluation there (what the writers write)
SEMANTIC = {"semantic": ("*.png",)}
PREDICTIONS = {"predictions/panoptic_pred": ("*.png",),
               "predictions/cityscapes_instances": ("*_pred.txt", "masks/*.png")}
PANOPTIC_JSON = "predictions/panoptic_pred.json"  # the list of panoptic_pred/'s PNGs (PQ reads both)


def _files(out_dir: Path, folders: dict[str, tuple[str, ...]]) -> dict[Path, list[Path]]:
    found = {}
    for folder, patterns in folders.items():
        files = sorted(f for p in patterns for f in (out_dir / folder).glob(p) if f.is_file())
        if folder == "predictions/panoptic_pred" and (out_dir / PANOPTIC_JSON).is_file():
            files.append(out_dir / PANOPTIC_JSON)
        if files:
            found[out_dir / folder] = files
    return found


def _written(save_predictions: bool, save_semantic: bool) -> dict[str, tuple[str, ...]]:
    """The folders (and their files' patterns) an evaluation with these options writes."""
    return {**(SEMANTIC if save_semantic else {}), **(PREDICTIONS if save_predictions else {})}


def remove_earlier_predictions(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool) -> int:
    """Remove an earlier evaluation's files from the folders this one writes (``semantic/`` with
    ``save_semantic``; ``predictions/panoptic_pred/`` and ``predictions/cityscapes_instances/`` with
    ``save_predictions``, with ``predictions/panoptic_pred.json``), logged per folder; warn of such
    files in the folders it does not write.
    Returns the count removed."""
    out_dir, removed = Path(out_dir), 0
    written = _written(save_predictions, save_semantic)
    for folder, files in _files(out_dir, written).items():
        for f in files:
            f.unlink()
        removed += len(files)
        logger.warning("removed %d file(s) of an earlier evaluation from %s (the official scripts would read "
                       "them as this evaluation's predictions)", len(files), folder)
    kept = {k: v for k, v in {**SEMANTIC, **PREDICTIONS}.items() if k not in written}
    for folder, files in _files(out_dir, kept).items():
        logger.warning("%s holds %d file(s) of an earlier evaluation, not written by this one (its "
                       "eval.save_predictions / eval.save_semantic are off): they are not this evaluation's "
                       "predictions", folder, len(files))
    return removed


def remove_killed_evaluations_files(out_dir: str | Path) -> int:
    """Remove what an evaluation killed before every image was scored (or one whose folders could
    not be renamed into place) left in :func:`~panfpn.evaluation.partial_predictions.partial_dir`
    (logged with its count; the official scripts never read it), putting the files of other kinds that were moved aside with their folder
    back. Rank 0, before any rank writes; returns the count removed."""
    out_dir, root = Path(out_dir), partial_dir(out_dir)
    if not root.exists():
        return 0
    removed = 0
    for folder, patterns in {**SEMANTIC, **PREDICTIONS}.items():
        aside = root / folder
        if aside.is_dir():
            files = prediction_files(aside, patterns)
            for f in files:
                f.unlink()
            removed += len(files)
            if put_back(aside, out_dir / folder, patterns):
                logger.info("put the files of %s that are not predictions back from %s", out_dir / folder, aside)
    rest = [f for f in root.rglob("*") if not f.is_dir()]  # panoptic_pred.json (and its write's temp file)
    shutil.rmtree(root)
    removed += len(rest)
    logger.warning("removed %s: %d file(s) of an evaluation killed before every image was scored, or whose "
                   "complete folders were kept there as they could not be renamed into place (the official "
                   "scripts do not read them)", root, removed)
    return removed


def check_fill_aside(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool) -> None:
    """ConfigError naming the path when a folder this evaluation writes cannot be filled aside and
    renamed into place (:func:`~panfpn.evaluation.partial_predictions.check_renamable`: a file or
    link there, another file system, not writable); rank 0, before anything is removed or evaluated."""
    check_renamable(out_dir, _written(save_predictions, save_semantic))


def fill_aside(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool) -> None:
    """Prepare the folders this evaluation writes to be filled in
    :func:`~panfpn.evaluation.partial_predictions.partial_dir` and renamed into place: each,
    emptied of an earlier evaluation's files (:func:`remove_earlier_predictions`), is removed, or
    moved there with the other files it holds. Rank 0, before any rank writes."""
    out_dir = Path(out_dir)
    for folder in _written(save_predictions, save_semantic):
        set_aside(out_dir / folder, partial_dir(out_dir) / folder)


def move_predictions_into_place(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool) -> list[Path]:
    """Rename the folders this evaluation filled aside into place, ``predictions/panoptic_pred.json``
    last; rank 0, once every rank has written its files. Returns the paths put in place."""
    folders = _written(save_predictions, save_semantic)
    placed = move_into_place(out_dir, folders, [PANOPTIC_JSON] if save_predictions else [])
    if placed:
        logger.info("moved the complete predictions into place: %s", ", ".join(str(p) for p in placed))
    return placed


def remove_partial_predictions(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool,
                               why: str, put_back_others: bool = True) -> int:
    """Remove the files of the folders this evaluation writes, where they are filled
    (:func:`~panfpn.evaluation.partial_predictions.partial_dir`) and in place (cleared of earlier
    ones when it started: those are its own), logged per folder with ``why``; returns the count
    removed. Every rank may call it at once (a file another rank removed first is skipped);
    ``put_back_others`` (one rank: rank 0) puts the files of other kinds that were moved aside with
    their folder back and removes the emptied folders."""
    out_dir, root = Path(out_dir), partial_dir(out_dir)
    written = _written(save_predictions, save_semantic)
    removed = 0
    for folder, patterns in written.items():
        aside = root / folder
        files = prediction_files(aside, patterns) if aside.is_dir() else []
        if folder == "predictions/panoptic_pred" and (root / PANOPTIC_JSON).is_file():
            files.append(root / PANOPTIC_JSON)
        for f in files:
            f.unlink(missing_ok=True)
        removed += len(files)
        if files:
            logger.warning("removed the %d prediction file(s) this evaluation had written for %s (in %s, where it "
                           "is filled until every image is scored): it %s", len(files), out_dir / folder, aside, why)
        if put_back_others and aside.is_dir():
            put_back(aside, out_dir / folder, patterns)
    for folder, files in _files(out_dir, written).items():  # put in place before the failure
        for f in files:
            f.unlink(missing_ok=True)
        removed += len(files)
        logger.warning("removed the %d prediction file(s) this evaluation had written to %s: it %s, and the "
                       "official scripts would score that partial set as the whole", len(files), folder, why)
    if put_back_others:
        remove_empty_folders(root)
    return removed


@dataclass
class Filling:
    """How far :func:`predictions_removed_on_failure`'s block got, which an error's or a stop's log
    line says: ``scored`` once every rank scored every image, ``renaming`` once the folders are being
    renamed into place."""

    scored: bool = False
    renaming: bool = False


@contextlib.contextmanager
def predictions_removed_on_failure(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool,
                                   main: bool = True) -> Iterator[Filling]:
    """Run the block; when it raises (an error, a stop signal's exception), remove the prediction
    files this evaluation wrote (:func:`remove_partial_predictions`, ``main``: the rank that puts
    other files back) and raise it on; except
    :class:`~panfpn.evaluation.partial_predictions.PredictionsKeptAside`: the folders of an evaluation
    that scored every image, which its message tells where to find, are kept."""
    filling = Filling()
    try:
        yield filling
    except PredictionsKeptAside:
        raise
    except BaseException as err:
        defer_stop_signals()  # a second signal must not cut the removal short
        why = ("was stopped" if isinstance(err, KeyboardInterrupt)
               else f"failed ({type(err).__name__})")
        when = (" after every image was scored, while its prediction folders were renamed into place"
                if filling.renaming else " after every image was scored" if filling.scored
                else " before every image was scored")
        remove_partial_predictions(out_dir, save_predictions=save_predictions, save_semantic=save_semantic,
                                   why=why + when, put_back_others=main)
        raise


__all__ = ["Filling", "check_fill_aside", "fill_aside", "move_predictions_into_place", "predictions_removed_on_failure", "remove_earlier_predictions",
           "remove_killed_evaluations_files", "remove_partial_predictions"]
