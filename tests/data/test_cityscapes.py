"""Cityscapes: the REAL createPanopticImgs output (label ids and train ids) loads correctly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_categories, cityscapes_panoptic_metadata

csp = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import H, W, instance_ids, write_cityscapes_root  # noqa: E402
from cityscapesscripts.helpers.labels import id2label, labels  # noqa: E402

FRAMES = ("frankfurt_000000_000294", "lindau_000001_000019")


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    return write_cityscapes_root(tmp_path_factory.mktemp("cityscapes"), FRAMES)


def _train_id_map(instance_ids: np.ndarray) -> np.ndarray:
    sem = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids)
    out = np.full(sem.shape, 255, dtype=np.int64)
    for label_id in np.unique(sem):
        lab = id2label[int(label_id)]
        if not lab.ignoreInEval:
            out[sem == label_id] = lab.trainId
    return out


def test_builtin_metadata_matches_cityscapesscripts():
    for use_train_id in (False, True):
        ref = [{"id": lab.trainId if use_train_id else lab.id, "name": lab.name,
                "color": list(lab.color), "supercategory": lab.category,
                "isthing": int(lab.hasInstances)} for lab in labels if not lab.ignoreInEval]
        assert cityscapes_panoptic_categories(use_train_id) == ref
        meta = cityscapes_panoptic_metadata(use_train_id)
        assert (meta.num_thing_classes, meta.num_sem_classes) == (8, 19)
        assert meta.sem_seg_mode == "all"
        assert meta.thing_sem_labels == list(range(11, 19))


@pytest.mark.parametrize("use_train_id", [False, True])
def test_loads_create_panoptic_imgs_output(cityscapes_root, use_train_id):
    suffix = "_trainId" if use_train_id else ""
    data = json.loads((cityscapes_root / "gtFine" / f"cityscapes_panoptic_val{suffix}.json").read_text())
    assert data["categories"] == cityscapes_panoptic_categories(use_train_id)

    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    meta = ds.metadata
    assert len(ds) == 2
    for k, frame in enumerate(FRAMES):
        s = ds[k]
        assert s["image_id"] == frame and isinstance(s["image_id"], str)
        assert s["file_name"] == f"{frame}_leftImg8bit.png"
        assert s["orig_size"] == (H, W)
        inst = instance_ids(k)
        assert torch.equal(s["sem_seg"], torch.from_numpy(_train_id_map(inst)))
        car, rider, person = (meta.thing_label(c) for c in
                              ((13, 12, 11) if use_train_id else (26, 25, 24)))
        assert sorted(s["instances"]["labels"].tolist()) == sorted([car, car, rider])
        sem_person = meta.sem_label(11 if use_train_id else 24)
        assert bool((s["sem_seg"][torch.from_numpy(inst == 24)] == sem_person).all())  # crowd: semantic only
        assert bool((s["gt_panoptic"][torch.from_numpy(inst == 1)] == 0).all())  # ego vehicle void
        for seg in s["segments_info"]:
            assert seg["category_id"] in meta


def test_missing_variant_names_the_other(cityscapes_root, tmp_path):
    (tmp_path / "gtFine").mkdir()
    json_file = cityscapes_root / "gtFine" / "cityscapes_panoptic_val_trainId.json"
    (tmp_path / "gtFine" / json_file.name).write_text(json_file.read_text())
    with pytest.raises(FileNotFoundError, match="cityscapes_panoptic_val_trainId.json exists"):
        cityscapes_panoptic_dataset(tmp_path, "val", use_train_id=False)
