"""Cityscapes images against createPanopticImgs' JSON, checked once when the dataset opens.

createPanopticImgs converts the ``gtFine/<split>/<city>/`` folders it finds, so a partly extracted
download goes unnoticed by it and by the official evaluator: a gtFine city missing when it ran is
missing from the JSON (its images are left out of training and of every PQ: a warning here), and a
leftImg8bit city missing is found only when training or evaluation reaches its first image (an
error here, naming the count per city and the first file, before any work is done).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from panfpn.data.dataset import PanopticDataset

logger = logging.getLogger(__name__)

_SUFFIX = "_leftImg8bit.png"


def _per_city(paths: list[Path]) -> str:
    return ", ".join(f"{city} ({n})" for city, n in sorted(Counter(p.parent.name for p in paths).items()))


def check_cityscapes_images(dataset: PanopticDataset, *, warn_unannotated: bool = True) -> None:
    """FileNotFoundError when images of the JSON are missing; with ``warn_unannotated`` a warning for
    ``<city>/<frame>_leftImg8bit.png`` files of the image folder that no annotation names (a record
    whose image id is no frame on disk is looked up as loading does)."""
    on_disk = {p.name[:-len(_SUFFIX)]: p for p in dataset.image_root.glob(f"*/*{_SUFFIX}")}
    used: set[Path] = set()
    missing: list[Path] = []
    for index, record in enumerate(dataset.records):
        path = on_disk.get(str(record.image_id))
        if path is None:
            try:
                path = dataset.image_path(index)
            except FileNotFoundError:
                missing.append(dataset.expected_image_path(index))
                continue
        used.add(path)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(dataset.records)} images of {dataset.json_file} are missing under "
            f"{dataset.image_root} (per city: {_per_city(missing)}), e.g. {missing[0]}: is leftImg8bit "
            f"extracted completely?")
    unused = sorted(p for p in on_disk.values() if p not in used) if warn_unannotated else []
    if unused:
        logger.warning("%d images under %s have no ground truth in %s and are left out (per city: %s): were "
                       "their gtFine folders missing when createPanopticImgs ran? Rerun it once gtFine is "
                       "complete", len(unused), dataset.image_root, dataset.json_file, _per_city(unused))
