"""configs/data/*.yaml instantiate and agree with their metadata."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from config_helpers import compose_config

from panfpn.data.resolvers import LABEL_KEYS, label_keys
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
def test_counts_derive_from_the_metadata_no_data_config_states_them(name):
    """Class counts and thing labels were literals in each data yaml, checked against the metadata."""
    raw = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert not set(LABEL_KEYS) & set(raw.keys()), f"{name}.yaml states a class count"
    cfg = compose_config([f"data={name}"], output_dir="unused")
    meta = instantiate(cfg.data.metadata)
    assert isinstance(meta, DatasetMetadata)
    assert OmegaConf.to_container(cfg.data)["num_thing_classes"] == "${panfpn.labels:${data.metadata},num_thing_classes}"
    assert {k: OmegaConf.to_container(cfg.data, resolve=True)[k] for k in LABEL_KEYS} == label_keys(meta)
    assert {"train", "val", "batch_size", "num_workers"} <= set(cfg.data.keys())


def test_counts_follow_the_metadata_node():
    """Another metadata on the synthetic config: its counts reach the model, nothing else to edit."""
    cfg = compose_config(["data.metadata._target_=panfpn.data.builtin_meta.coco_panoptic_metadata"],
                         output_dir="unused")
    assert (cfg.data.num_thing_classes, cfg.data.num_sem_classes, list(cfg.data.thing_sem_labels)) == (80, 54, [53])
    assert (cfg.model.semantic_head.num_classes, cfg.model.roi_heads.mask_head.num_classes) == (54, 80)


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


ALL_DATA_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_every_data_config_is_covered():
    assert ALL_DATA_CONFIGS == ["cityscapes_panoptic", "coco_panoptic", "coco_panoptic_folder", "synthetic"]


@pytest.mark.parametrize("name", ALL_DATA_CONFIGS)
def test_num_workers_fit_the_cpus_this_process_may_use(name, monkeypatch):
    """The Cityscapes config asked for 4 workers whatever the machine had."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("panfpn.utils.cpus.CGROUP_CPU_MAX", Path("/nonexistent/cpu.max"))  # no quota
    cap = 1 if name == "synthetic" else 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert _cfg(name).data.num_workers == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(3)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert _cfg(name).data.num_workers == min(cap, 3)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert _cfg(name).data.num_workers == cap
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # torchrun: 32 processes share the 64 CPUs
    assert _cfg(name).data.num_workers == min(cap, 2)


@pytest.mark.parametrize("name", ALL_DATA_CONFIGS)
def test_skip_bad_images_is_a_data_key_the_train_split_follows(name):
    cfg = _cfg(name)
    assert cfg.data.skip_bad_images is False
    assert OmegaConf.to_container(cfg.data.train)["skip_bad_images"] == "${data.skip_bad_images}"
    assert "skip_bad_images" not in cfg.data.val  # evaluation sees every image or fails


def test_skip_bad_images_reaches_the_train_dataset(tmp_path):
    cfg = _cfg("synthetic", **{"data.train.num_images": 2, "data.train.cache_dir": str(tmp_path),
                               "data.skip_bad_images": True})
    assert instantiate(cfg.data.train).skip_bad_images is True


def test_data_doc_cityscapes_train_id_key_switches_both_splits():
    """The docs named data.train.use_train_id, which left the val split on label ids."""
    data_section = DATA_DOC.read_text().split("\n## Data\n", 1)[1].split("\n## ", 1)[0]
    keys = re.findall(r"(data\.[\w.]*use_train_id)=true", data_section)
    assert keys, "docs/data.md's Data section names no use_train_id key"
    for key in keys:
        cfg = _cfg("cityscapes_panoptic", **{key: True})
        assert cfg.data.train.use_train_id is True and cfg.data.val.use_train_id is True, key
        assert instantiate(cfg.data.metadata).name == "cityscapes_panoptic_trainId", key
