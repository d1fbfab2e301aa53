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
as the whole. :func:`predictions_removed_on_failure` removes them (logged with their count), so
after such an end the folders hold none of its files.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

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


def remove_partial_predictions(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool,
                               why: str) -> int:
    """Remove the files of the folders this evaluation writes (cleared of earlier ones when it
    started: they are its own), logged per folder with ``why``; returns the count removed. Every
    rank may call it at once (a file another rank removed first is skipped)."""
    removed = 0
    for folder, files in _files(Path(out_dir), _written(save_predictions, save_semantic)).items():
        for f in files:
            f.unlink(missing_ok=True)
        removed += len(files)
        logger.warning("removed the %d prediction file(s) this evaluation had written to %s: it %s, and the "
                       "official scripts would score that partial set as the whole", len(files), folder, why)
    return removed


@contextlib.contextmanager
def predictions_removed_on_failure(out_dir: str | Path, *, save_predictions: bool,
                                   save_semantic: bool) -> Iterator[None]:
    """Run the block; when it raises (an error, a stop signal's exception), remove the prediction
    files this evaluation wrote (:func:`remove_partial_predictions`) and raise it on."""
    try:
        yield
    except BaseException as err:
        defer_stop_signals()  # a second signal must not cut the removal short
        why = ("was stopped" if isinstance(err, KeyboardInterrupt)
               else f"failed ({type(err).__name__})")
        remove_partial_predictions(out_dir, save_predictions=save_predictions, save_semantic=save_semantic,
                                   why=why + " before every image was scored")
        raise


__all__ = ["predictions_removed_on_failure", "remove_earlier_predictions", "remove_partial_predictions"]
