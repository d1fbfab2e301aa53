"""The Cityscapes instance-level files of a tools/predict.py folder (``predict.cityscapes_instances``):
``cityscapes_instances/<city>_<seq>_<frame>_pred.txt`` + ``masks/``, written by
:func:`panfpn.evaluation.cityscapes_instance_files.write_instance_files` as tools/eval.py writes them;
which inputs and labels can have them, and an image's files removed before it is redone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from panfpn.data.image_ids import id_of
from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.cityscapes_ap import INSTANCE_CLASSES, cityscapes_classes
from panfpn.evaluation.cityscapes_instance_files import write_instance_files
from panfpn.utils.errors import ConfigError

INSTANCES_DIR = "cityscapes_instances"  # its folder in predict.output_dir


def cityscapes_instance_ids(paths: Sequence[Path]) -> list[str]:
    """createPanopticImgs' ``<city>_<seq>_<frame>`` of each input, the name cityscapesScripts'
    instance-level evaluator matches its ``<id>*.txt`` by (whatever ``predict.image_id`` gives the
    JSON); a ConfigError naming ``predict.cityscapes_instances`` for a file not named
    ``<city>_<seq>_<frame>_leftImg8bit.*`` or two files of one id (the script refuses both)."""
    ids: list[str] = []
    owner: dict[str, Path] = {}
    for path in paths:
        image_id = id_of(Path(path), "cityscapes")
        if image_id is None:
            raise ConfigError(f"config key 'predict.cityscapes_instances': {path} is not named as a Cityscapes "
                              "image (<city>_<seq>_<frame>_leftImg8bit.png), whose id names the instance files; "
                              "predict the leftImg8bit folder or set predict.cityscapes_instances=false")
        if image_id in owner:
            raise ConfigError(f"config key 'predict.cityscapes_instances': {owner[image_id]} and {path} are both "
                              f"frame {image_id!r}, and the official script refuses two prediction files of one "
                              "frame; predict one of them")
        owner[image_id] = Path(path)
        ids.append(str(image_id))
    return ids


def cityscapes_instance_classes(metadata: DatasetMetadata) -> dict[int, int]:
    """Dataset category id -> scored class index of Cityscapes metadata (label or train ids); a
    ConfigError naming ``predict.cityscapes_instances`` for other labels (no Cityscapes label ids)."""
    try:
        return cityscapes_classes(metadata)
    except ConfigError:
        things = sorted((c.id, c.name) for c in metadata.categories if c.isthing)
        expected = ", ".join(f"{name} {label_id}" for name, label_id, _ in INSTANCE_CLASSES)
        raise ConfigError(
            f"config key 'predict.cityscapes_instances': cityscapesScripts' instance files hold Cityscapes' 8 "
            f"instance classes ({expected}, or train ids 11..18), but the model's labels "
            f"({metadata.name or 'unnamed'}) have thing categories {things[:10]}{' ...' if len(things) > 10 else ''}; "
            "set predict.cityscapes_instances=false") from None


@dataclasses.dataclass(frozen=True)
class InstanceFiles:
    """Where and how one run writes cityscapesScripts' instance-level files: ``out_dir``, the
    scored classes (:func:`cityscapes_instance_classes`), the model's thing labels -> dataset ids
    and each output stem's Cityscapes id (:func:`cityscapes_instance_ids`)."""

    out_dir: Path
    classes: dict[int, int]
    thing_ids: tuple[int, ...]
    ids: Mapping[str, str]

    def text_file(self, stem: str) -> Path:
        """The image's ``_pred.txt``: written after its masks, so it marks the image's files done."""
        return self.out_dir / f"{self.ids[stem]}_pred.txt"

    def remove_earlier(self, stems: Sequence[str]) -> int:
        """Delete the text files, then the masks, that an earlier run wrote for these images (they
        are redone: a new result may have fewer instances, and a zip must not carry the old
        masks); returns how many files were removed."""
        wanted = {self.ids[stem] for stem in stems}
        removed = 0
        for stem in stems:
            path = self.text_file(stem)
            if path.exists():
                path.unlink()
                removed += 1
        masks = self.out_dir / "masks"
        if masks.is_dir() and wanted:
            for entry in list(masks.iterdir()):
                m = _MASK_NAME.fullmatch(entry.name)
                if m is not None and m.group(1) in wanted:
                    entry.unlink()
                    removed += 1
        return removed

    def write(self, stem: str, labels: Sequence[int], scores: Sequence[float], masks: Any) -> None:
        """One image's mask PNGs, then its text file (contiguous thing ``labels`` as the model gives them)."""
        dataset_ids = [self.thing_ids[int(label)] for label in labels]
        write_instance_files(self.out_dir, self.ids[stem], dataset_ids, scores, masks, self.classes)


_MASK_NAME = re.compile(r"(.+)_\d+\.png")  # masks/<image id>_<k>.png


def earlier_instance_files(out_dir: Path, paths: Sequence[Path]) -> list[Path]:
    """The ``_pred.txt`` files in ``out_dir`` (a predict folder's ``cityscapes_instances/``) of these
    inputs' frames: an earlier run's, left as they were by a run without ``predict.cityscapes_instances``
    that redoes the images (another checkpoint's instances beside this run's panoptic and semantic
    files, were the folder submitted)."""
    if not out_dir.is_dir():
        return []
    frames = {str(i) for p in paths if (i := id_of(Path(p), "cityscapes")) is not None}
    return sorted(f for f in out_dir.glob("*_pred.txt") if f.name.removesuffix("_pred.txt") in frames)


__all__ = ["INSTANCES_DIR", "InstanceFiles", "cityscapes_instance_classes", "cityscapes_instance_ids",
           "earlier_instance_files"]
