"""A tiny Cityscapes-layout set (gtFine instanceIds/labelIds + leftImg8bit images) converted by the
real cityscapesscripts createPanopticImgs, for the data and official-evaluator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

H, W = 32, 64


def instance_ids(k: int) -> np.ndarray:
    """``*_gtFine_instanceIds.png`` content of frame ``k`` in Cityscapes' encoding: label id for
    stuff, crowd and void pixels, label id * 1000 + n for thing instances."""
    m = np.full((H, W), 23, dtype=np.uint16)            # sky
    m[H // 2:] = 7                                      # road
    m[4:14, 0:12 + k] = 11                              # building (its size differs per frame)
    m[18:28, 5:20] = 26000 + k                          # car instance
    m[18:28, 22:34] = 26001 + k                         # another car
    m[10:20, 40:50] = 24                                # person crowd (id < 1000)
    m[20:30, 50:58] = 25000                             # rider
    m[28:, 58:] = 1                                     # ego vehicle: ignored in eval -> void
    m[0:3, 30:40] = 9                                   # parking: ignored in eval -> void
    return m


def write_gt_fine(root: Path, split: str, frames: Mapping[str, np.ndarray], seed: int = 0) -> None:
    """Write ``gtFine/<split>/<city>/<frame>_gtFine_{instanceIds,labelIds}.png`` (instanceIds in
    Cityscapes' encoding, labelIds = its label ids) and a random ``leftImg8bit`` image of the same
    size for each frame, in the folders of a Cityscapes download."""
    for k, (frame, inst) in enumerate(frames.items()):
        city = frame.split("_")[0]
        gt_dir, img_dir = root / "gtFine" / split / city, root / "leftImg8bit" / split / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        img_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{frame}_gtFine_instanceIds.png")
        label_ids = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
        Image.fromarray(label_ids).save(gt_dir / f"{frame}_gtFine_labelIds.png")
        rgb = np.random.default_rng(seed + k).integers(0, 255, (*inst.shape, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(img_dir / f"{frame}_leftImg8bit.png")


def create_panoptic_imgs(root: Path, split: str = "val") -> None:
    """Run cityscapesscripts' createPanopticImgs on ``root/gtFine`` (label ids and train ids)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    for use_train_id in (False, True):
        convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(root / "gtFine"),
                         useTrainId=use_train_id, setNames=[split])


def write_cityscapes_root(root: Path, frames: Sequence[str]) -> Path:
    """Write the val split of ``frames`` under ``root`` and run createPanopticImgs (label ids and
    train ids) on it, as a user would."""
    write_gt_fine(root, "val", {frame: instance_ids(k) for k, frame in enumerate(frames)})
    create_panoptic_imgs(root, "val")
    return root
