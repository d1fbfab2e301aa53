"""An evaluation's prediction folders cleared of an earlier evaluation's files before it writes.

cityscapesScripts' pixel- and instance-level scripts score every prediction file they find below
``CITYSCAPES_RESULTS`` by the frame's name, not a list of this evaluation's: an earlier evaluation
of other images into the same run folder (``eval.max_images``, another split, another model's run
of more images) left its files there, and the scripts scored them beside this run's without a
word. tools/eval.py therefore removes the files of the kinds it writes from the folders it writes
(logged with their count), and warns of those folders it does not write this time.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# folder below the run folder -> the files of an evaluation there (what the writers write)
SEMANTIC = {"semantic": ("*.png",)}
PREDICTIONS = {"predictions/panoptic_pred": ("*.png",),
               "predictions/cityscapes_instances": ("*_pred.txt", "masks/*.png")}


def _files(out_dir: Path, folders: dict[str, tuple[str, ...]]) -> dict[Path, list[Path]]:
    found = {}
    for folder, patterns in folders.items():
        files = sorted(f for p in patterns for f in (out_dir / folder).glob(p) if f.is_file())
        if files:
            found[out_dir / folder] = files
    return found


def remove_earlier_predictions(out_dir: str | Path, *, save_predictions: bool, save_semantic: bool) -> int:
    """Remove an earlier evaluation's files from the folders this one writes (``semantic/`` with
    ``save_semantic``; ``predictions/panoptic_pred/`` and ``predictions/cityscapes_instances/`` with
    ``save_predictions``), logged per folder; warn of such files in the folders it does not write.
    Returns the count removed."""
    out_dir, removed = Path(out_dir), 0
    written = {**(SEMANTIC if save_semantic else {}), **(PREDICTIONS if save_predictions else {})}
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


__all__ = ["remove_earlier_predictions"]
