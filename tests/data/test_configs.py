"""configs/data/*.yaml instantiate and agree with their metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from panfpn.data.build import check_metadata_matches
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, ResizeShortestEdge

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "coco_panoptic_sample"


def _cfg(name: str, **overrides):
    cfg = OmegaConf.create({"data": OmegaConf.load(CONFIGS / f"{name}.yaml")})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


@pytest.mark.parametrize("name", ["synthetic", "coco_panoptic", "cityscapes_panoptic"])
def test_metadata_matches_literal_counts(name):
    cfg = _cfg(name)
    meta = instantiate(cfg.data.metadata)
    assert isinstance(meta, DatasetMetadata)
    check_metadata_matches(cfg.data, meta)
    assert {"train", "val", "batch_size", "num_workers"} <= set(cfg.data.keys())


def test_check_metadata_names_the_wrong_key():
    cfg = _cfg("synthetic", **{"data.num_sem_classes": 4})
    with pytest.raises(ValueError, match="data.num_sem_classes' is 4 .* gives 5"):
        check_metadata_matches(cfg.data, instantiate(cfg.data.metadata))
    del cfg.data["thing_sem_labels"]
    with pytest.raises(ValueError, match="data.thing_sem_labels' is missing"):
        check_metadata_matches({"num_thing_classes": 4, "num_sem_classes": 5}, instantiate(cfg.data.metadata))


def test_synthetic_config_builds_datasets(tmp_path):
    cfg = _cfg("synthetic", **{"data.train.num_images": 4, "data.val.num_images": 2,
                               "data.train.cache_dir": str(tmp_path), "data.val.cache_dir": str(tmp_path)})
    train, val = instantiate(cfg.data.train), instantiate(cfg.data.val)
    assert len(train) == 4 and len(val) == 2
    assert isinstance(train.transforms, Compose)
    assert [type(t) for t in train.transforms.transforms] == [ResizeShortestEdge, RandomHorizontalFlip]
    assert min(train[0]["image"].shape[1:]) in (96, 112, 128, 144, 160)
    s = val[0]
    assert s["image"].shape == (3, 128, 128) and "gt_panoptic" in s
    assert train.records[0].segments != val.records[0].segments  # splits differ by seed


def test_coco_config_reads_official_layout(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    shutil.copy(SAMPLE / "panoptic_examples.json", root / "annotations" / "panoptic_val2017.json")
    for p in (SAMPLE / "panoptic_examples").glob("*.png"):
        shutil.copy(p, root / "annotations" / "panoptic_val2017")
    shutil.copytree(SAMPLE / "input_images", root / "val2017")
    monkeypatch.delenv("COCO_ROOT", raising=False)
    monkeypatch.setenv("PANFPN_DATA", str(tmp_path))  # root via the environment: $PANFPN_DATA/coco
    cfg = _cfg("coco_panoptic")
    val = instantiate(cfg.data.val)
    s = val[0]
    assert s["image"].shape == (3, 800, 1199) and s["orig_size"] == (427, 640)  # test 800/1333
    data = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == s["image_id"])
    meta = val.metadata
    n_things = sum(meta.category(x["category_id"]).isthing and not x["iscrowd"] for x in ann["segments_info"])
    assert s["sem_seg"].shape == (800, 1199) and len(s["instances"]["labels"]) == n_things
    with pytest.raises(InstantiationException, match=r"panoptic_train2017.json not found.*data.root"):
        instantiate(cfg.data.train)


def test_missing_root_names_config_key(monkeypatch):
    for var in ("COCO_ROOT", "CITYSCAPES_DATASET", "PANFPN_DATA"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InstantiationException, match=r"data.root.*COCO_ROOT"):
        instantiate(_cfg("coco_panoptic").data.train)
    with pytest.raises(InstantiationException, match=r"data.root.*CITYSCAPES_DATASET"):
        instantiate(_cfg("cityscapes_panoptic").data.val)


def test_cityscapes_transforms_follow_the_paper():
    cfg = _cfg("cityscapes_panoptic", **{"data.metadata.use_train_id": True})
    assert cfg.data.train.use_train_id is True and cfg.data.val.use_train_id is True
    t = instantiate(cfg.data.train.transforms)
    resize, crop, flip = t.transforms
    assert (resize.lengths, resize.sample_style) == ([512, 2048], "range")
    assert (crop.height, crop.width) == (512, 1024) and flip.prob == 0.5
    assert isinstance(crop, RandomCrop)
    assert instantiate(cfg.data.metadata).name == "cityscapes_panoptic_trainId"
