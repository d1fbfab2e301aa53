"""Dataset builders that hydra configs name with ``_target_`` (configs/data/*.yaml).

Every builder's ``skip_bad_images`` is :class:`PanopticDataset`'s (the configs pass
``data.skip_bad_images`` to the train split). The generic folder dataset is
:func:`panfpn.data.folder.folder_panoptic_dataset`.

Data roots come from the config (``data.root``) or, when it is null, from the environment:
COCO: ``$COCO_ROOT``, else ``$PANFPN_DATA/coco``; Cityscapes: ``$CITYSCAPES_DATASET`` (the
variable cityscapesscripts reads), else ``$PANFPN_DATA/cityscapes``.
"""

from __future__ import annotations

import os
from pathlib import Path

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata, coco_panoptic_metadata
from panfpn.data.cityscapes_files import check_cityscapes_images
from panfpn.data.dataset import PanopticDataset
from panfpn.data.transforms import Transform
from panfpn.data.synthetic import ensure_synthetic, synthetic_metadata
from panfpn.utils.errors import ConfigError


def synthetic_dataset(split: str = "train", *, num_images: int, seed: int, height: int = 128,
                      width: int = 128, transforms: Transform | None = None, is_train: bool = True,
                      cache_dir: str | None = None, filter_empty: bool = False,
                      skip_bad_images: bool = False, root: str | os.PathLike | None = None) -> PanopticDataset:
    """The synthetic dataset with these parameters, generated into the cache on first use.

    Splits differ by ``seed`` (the configs give train and val different seeds); ``split`` only
    names the cache entry. ``root`` (configs/data/synthetic.yaml passes ``data.root``) must be
    null: a data root given with the default ``data=synthetic`` meant another dataset, and was
    silently not read.
    """
    check_synthetic_root(root)
    root = ensure_synthetic(split, num_images, seed, height, width, cache_dir=cache_dir)
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic",
                           metadata=synthetic_metadata(), transforms=transforms, is_train=is_train,
                           filter_empty=filter_empty, skip_bad_images=skip_bad_images)


def check_synthetic_root(root: str | os.PathLike | None) -> None:
    """ConfigError unless ``root`` is null: data=synthetic generates its images and reads no root."""
    if root not in (None, ""):
        raise ConfigError(f"config key 'data.root' is {str(root)!r} but data=synthetic reads no data root (it "
                          "generates its images into $PANFPN_CACHE): pick the dataset too, e.g. data=coco_panoptic, "
                          "data=coco_panoptic_folder or an experiment=...")


def _resolve_root(root: str | os.PathLike | None, env_vars: tuple[str, ...], subdir: str,
                  what: str) -> Path:
    if root not in (None, ""):
        return Path(os.path.expanduser(str(root)))
    for var in env_vars:
        if os.environ.get(var):
            return Path(os.environ[var])
    if os.environ.get("PANFPN_DATA"):
        return Path(os.environ["PANFPN_DATA"]) / subdir
    raise FileNotFoundError(
        f"{what} data root is not set: set the config key data.root (e.g. data.root=/path/to/"
        f"{subdir}) or the environment variable {' or '.join(env_vars)} (the root itself) or "
        f"PANFPN_DATA (a folder holding {subdir}/)")


def _require(path: Path, what: str, root: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} not found (data root {root}, config key "
                                f"data.root or its environment variable)")
    return path


def coco_panoptic_dataset(root: str | os.PathLike | None = None, split: str = "train", *,
                          transforms: Transform | None = None, is_train: bool = True,
                          filter_empty: bool = False, skip_bad_images: bool = False) -> PanopticDataset:
    """COCO 2017 panoptic: ``root/annotations/panoptic_{split}2017.json``, its PNG folder
    ``root/annotations/panoptic_{split}2017/`` and images ``root/{split}2017/``."""
    json_file, image_dir, png_dir = coco_panoptic_paths(root, split)
    return PanopticDataset(json_file, image_dir, png_dir, metadata=coco_panoptic_metadata(),
                           transforms=transforms, is_train=is_train, filter_empty=filter_empty,
                           skip_bad_images=skip_bad_images)


def cityscapes_panoptic_dataset(root: str | os.PathLike | None = None, split: str = "train", *,
                                use_train_id: bool = False, transforms: Transform | None = None,
                                is_train: bool = True, filter_empty: bool = False,
                                skip_bad_images: bool = False) -> PanopticDataset:
    """Cityscapes as ``createPanopticImgs`` leaves it: ``root/gtFine/cityscapes_panoptic_{split}
    [_trainId].json`` + PNG folder of the same name, images ``root/leftImg8bit/{split}/<city>/``.

    ``use_train_id`` selects the ``--use-train-id`` output (category ids = train ids). Opening it
    checks the images against the JSON (:mod:`panfpn.data.cityscapes_files`): missing ones are an
    error, ones without ground truth a warning.
    """
    json_file, image_dir, png_dir = cityscapes_panoptic_paths(root, split, use_train_id)
    dataset = PanopticDataset(json_file, image_dir, png_dir,
                              metadata=cityscapes_panoptic_metadata(use_train_id),
                              transforms=transforms, is_train=is_train, filter_empty=filter_empty,
                              skip_bad_images=skip_bad_images)
    # filtered records no longer name every annotated frame: no warning about frames without them
    check_cityscapes_images(dataset, warn_unannotated=not filter_empty)
    return dataset


def coco_panoptic_paths(root: str | os.PathLike | None = None, split: str = "train") -> tuple[Path, Path, Path]:
    """``(json_file, image_dir, png_dir)`` of a COCO 2017 panoptic split, each checked to exist
    (FileNotFoundError naming it and the data root); nothing is read."""
    base = _resolve_root(root, ("COCO_ROOT",), "coco", "COCO panoptic")
    ann = base / "annotations"
    json_file = _require(ann / f"panoptic_{split}2017.json", "COCO panoptic annotations", base)
    png_dir = _require(ann / f"panoptic_{split}2017", "COCO panoptic PNG folder (unzip "
                       f"panoptic_{split}2017.zip there)", base)
    image_dir = _require(base / f"{split}2017", "COCO images", base)
    return json_file, image_dir, png_dir


def cityscapes_panoptic_paths(root: str | os.PathLike | None = None, split: str = "train",
                              use_train_id: bool = False) -> tuple[Path, Path, Path]:
    """``(json_file, image_dir, png_dir)`` of a Cityscapes panoptic split, each checked to exist
    (FileNotFoundError naming it, with a hint when the other ``use_train_id`` output is there)."""
    base = _resolve_root(root, ("CITYSCAPES_DATASET",), "cityscapes", "Cityscapes")
    name = f"cityscapes_panoptic_{split}" + ("_trainId" if use_train_id else "")
    json_file = base / "gtFine" / f"{name}.json"
    if not json_file.exists():
        other = base / "gtFine" / (f"cityscapes_panoptic_{split}.json" if use_train_id
                                   else f"cityscapes_panoptic_{split}_trainId.json")
        hint = (f"; {other.name} exists: set use_train_id={not use_train_id} on the dataset and "
                f"the metadata" if other.exists() else
                "; create it with cityscapesscripts' createPanopticImgs")
        raise FileNotFoundError(f"Cityscapes panoptic annotations: {json_file} not found (data "
                                f"root {base}, config key data.root){hint}")
    png_dir = _require(base / "gtFine" / name, "Cityscapes panoptic PNG folder", base)
    image_dir = _require(base / "leftImg8bit" / split, "Cityscapes images", base)
    return json_file, image_dir, png_dir
