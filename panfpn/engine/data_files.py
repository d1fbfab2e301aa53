"""The files a job's datasets open at their start, checked to exist before anything is built or
fetched: tools/train.py (``data.train``, and ``data.val`` when it evaluates) and tools/eval.py
(``data.val``) check them before the model and its weights (a download of ImageNet weights before
a missing-annotations error), and a multirun's dry start checks every job's
(:mod:`panfpn.engine.training.dry_start`). Nothing is read: the builders' own path functions
(``coco_panoptic_paths`` ...) say what each dataset opens, with errors naming the file and key."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

from omegaconf import DictConfig

logger = logging.getLogger("panfpn")


def _dataset_files() -> dict[str, Callable[..., Any]]:
    """Dataset builder ``_target_`` -> the function that checks the files it opens at its start."""
    from panfpn.data.build import check_synthetic_root, cityscapes_panoptic_paths, coco_panoptic_paths
    from panfpn.data.folder import folder_panoptic_paths

    return {"panfpn.data.build.coco_panoptic_dataset": coco_panoptic_paths,
            "panfpn.data.build.cityscapes_panoptic_dataset": cityscapes_panoptic_paths,
            "panfpn.data.folder.folder_panoptic_dataset": folder_panoptic_paths,
            "panfpn.data.build.synthetic_dataset": check_synthetic_root}


def training_splits(cfg: DictConfig) -> list[str]:
    """The dataset nodes a training opens: ``data.train``, and ``data.val`` when it evaluates."""
    return ["data.train"] + (["data.val"] if int(cfg.train.eval_period) >= 0 else [])


def check_dataset_files(cfg: DictConfig, splits: Sequence[str] | None = None) -> None:
    """The files the dataset nodes ``splits`` (default: a training's, :func:`training_splits`)
    open at their start exist (FileNotFoundError naming the file and config key); a builder not
    known here is not checked (logged)."""
    from panfpn.engine.job_setup import resolved

    known = _dataset_files()
    for split in training_splits(cfg) if splits is None else splits:
        node = resolved(cfg, split) or {}
        check = known.get(str(node.get("_target_")))
        if check is None:
            logger.info("%s._target_=%s: its files are not checked before the job starts", split,
                        node.get("_target_"))
            continue
        wanted = inspect.signature(check).parameters
        check(**{k: v for k, v in node.items() if k in wanted})
