"""Small helpers the data tests share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_first_images(src: Path, root: Path, n: int) -> dict:
    """Copy the first ``n`` images of the dataset at ``src`` (images/, panoptic/, panoptic.json)
    to ``root``; returns the copy's JSON as a dict."""
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    data = json.loads((src / "panoptic.json").read_text())
    data["images"], data["annotations"] = data["images"][:n], data["annotations"][:n]
    for img, ann in zip(data["images"], data["annotations"]):
        shutil.copy(src / "images" / img["file_name"], root / "images")
        shutil.copy(src / "panoptic" / ann["file_name"], root / "panoptic")
    (root / "panoptic.json").write_text(json.dumps(data))
    return data
