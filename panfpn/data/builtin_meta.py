"""Built-in category metadata of COCO panoptic and Cityscapes, embedded so no dataset is needed.

COCO: the official 133 panoptic categories (80 things, 53 stuff, ids 1..200), shipped as
``coco_panoptic_categories.json`` (copied from the COCO panoptic API). Cityscapes: the 19
evaluated classes (8 things, 11 stuff) as ``createPanopticImgs`` writes them, with label ids
(default) or train ids (``--use-train-id``).
"""

from __future__ import annotations

from importlib import resources

from panfpn.data.metadata import DatasetMetadata
from panfpn.utils.json_file import load_json

# (name, label id, train id, colour, supercategory, isthing) -- cityscapesscripts' labels.py.
_CITYSCAPES = (
    ("road", 7, 0, (128, 64, 128), "flat", False),
    ("sidewalk", 8, 1, (244, 35, 232), "flat", False),
    ("building", 11, 2, (70, 70, 70), "construction", False),
    ("wall", 12, 3, (102, 102, 156), "construction", False),
    ("fence", 13, 4, (190, 153, 153), "construction", False),
    ("pole", 17, 5, (153, 153, 153), "object", False),
    ("traffic light", 19, 6, (250, 170, 30), "object", False),
    ("traffic sign", 20, 7, (220, 220, 0), "object", False),
    ("vegetation", 21, 8, (107, 142, 35), "nature", False),
    ("terrain", 22, 9, (152, 251, 152), "nature", False),
    ("sky", 23, 10, (70, 130, 180), "sky", False),
    ("person", 24, 11, (220, 20, 60), "human", True),
    ("rider", 25, 12, (255, 0, 0), "human", True),
    ("car", 26, 13, (0, 0, 142), "vehicle", True),
    ("truck", 27, 14, (0, 0, 70), "vehicle", True),
    ("bus", 28, 15, (0, 60, 100), "vehicle", True),
    ("train", 31, 16, (0, 80, 100), "vehicle", True),
    ("motorcycle", 32, 17, (0, 0, 230), "vehicle", True),
    ("bicycle", 33, 18, (119, 11, 32), "vehicle", True),
)


def coco_panoptic_categories() -> list[dict]:
    """The official COCO panoptic category dicts (id, name, supercategory, isthing, color)."""
    with resources.as_file(resources.files("panfpn.data") / "coco_panoptic_categories.json") as path:
        return load_json(path, what="packaged COCO category list", expect=list)


def coco_panoptic_metadata() -> DatasetMetadata:
    """COCO panoptic: 80 things + 53 stuff; semantic labels = 53 stuff + one merged 'thing'."""
    return DatasetMetadata.from_coco_categories(
        coco_panoptic_categories(), sem_seg_mode="stuff_plus_thing", name="coco_panoptic")


def cityscapes_panoptic_categories(use_train_id: bool = False) -> list[dict]:
    """Cityscapes categories exactly as ``createPanopticImgs`` writes them into its JSON."""
    return [
        {"id": train_id if use_train_id else label_id, "name": name, "color": list(color),
         "supercategory": supercategory, "isthing": int(isthing)}
        for name, label_id, train_id, color, supercategory, isthing in _CITYSCAPES
    ]


def cityscapes_panoptic_metadata(use_train_id: bool = False) -> DatasetMetadata:
    """Cityscapes: 19 classes; semantic mode 'all' (semantic label = train id in both variants)."""
    return DatasetMetadata.from_coco_categories(
        cityscapes_panoptic_categories(use_train_id), sem_seg_mode="all",
        name="cityscapes_panoptic" + ("_trainId" if use_train_id else ""))
