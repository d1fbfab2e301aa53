"""Cityscapes: the REAL createPanopticImgs output (label ids and train ids) loads correctly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_categories, cityscapes_panoptic_metadata

csp = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import H, W, create_panoptic_imgs, instance_ids, write_cityscapes_root, write_gt_fine  # noqa: E402,E501
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


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp_path / "cityscapes"))


def test_a_missing_image_is_named_where_the_download_puts_it(cityscapes_root, tmp_path):
    """createPanopticImgs' file_name '<frame>_gtFine_leftImg8bit.png' is no path of the download:
    the errors and data.check's report name leftImg8bit/val/<city>/<frame>_leftImg8bit.png."""
    from panfpn.data.check import Split, check_splits
    from panfpn.data.dataset import PanopticDataset

    root = _copy(cityscapes_root, tmp_path)
    frame = FRAMES[1]
    expected = root / "leftImg8bit" / "val" / "lindau" / f"{frame}_leftImg8bit.png"
    expected.unlink()
    json_file = root / "gtFine" / "cityscapes_panoptic_val.json"
    ds = PanopticDataset(json_file, root / "leftImg8bit" / "val", root / "gtFine" / "cityscapes_panoptic_val",
                         metadata=cityscapes_panoptic_metadata(), is_train=False)
    with pytest.raises(FileNotFoundError) as err:
        ds[1]
    assert str(err.value).startswith(f"image of image id {frame!r} not found: {expected} (file_name "
                                     f"'{frame}_gtFine_leftImg8bit.png' in ")
    split = Split("val", ds.json_file, ds.image_root, ds.panoptic_root)
    report = check_splits([split], 0)
    assert [(p["image_id"], p["kind"], p["file"]) for p in report["problems"]] == [
        (frame, "missing image", str(expected))]


def test_a_missing_leftimg8bit_city_stops_the_dataset_when_it_opens(cityscapes_root, tmp_path):
    """gtFine complete, leftImg8bit not: found when the dataset opens, not at the city's first image
    in training or evaluation."""
    import shutil

    root = _copy(cityscapes_root, tmp_path)
    shutil.rmtree(root / "leftImg8bit" / "val" / "lindau")
    expected = root / "leftImg8bit" / "val" / "lindau" / f"{FRAMES[1]}_leftImg8bit.png"
    for use_train_id in (False, True):
        with pytest.raises(FileNotFoundError) as err:
            cityscapes_panoptic_dataset(root, "val", use_train_id=use_train_id, is_train=False)
        assert str(err.value) == (
            f"1 of the 2 images of {root / 'gtFine'}/cityscapes_panoptic_val{'_trainId' if use_train_id else ''}.json "
            f"are missing under {root / 'leftImg8bit' / 'val'} (per city: lindau (1)), e.g. {expected}: is "
            "leftImg8bit extracted completely?")


def test_a_wrong_size_image_names_the_image_and_its_png(cityscapes_root, tmp_path):
    """...as a known input error: tools/train.py and eval.py print its one line and exit 2 (it was a
    plain ValueError: hydra's traceback, exit 1, as for a bug)."""
    from panfpn.engine.tool_errors import input_error

    root = _copy(cityscapes_root, tmp_path)
    image = root / "leftImg8bit" / "val" / "lindau" / f"{FRAMES[1]}_leftImg8bit.png"
    Image.fromarray(np.zeros((H // 2, W, 3), dtype=np.uint8)).save(image)
    ds = cityscapes_panoptic_dataset(root, "val", is_train=False)
    with pytest.raises(ValueError, match=rf"image id '{FRAMES[1]}': image {image} is {H // 2}x{W} .* but its "
                                         rf"panoptic PNG {FRAMES[1]}_gtFine_panoptic.png is {H}x{W}") as err:
        ds[1]
    assert input_error(err.value) is err.value


def test_images_of_a_city_without_gtfine_are_warned_about(tmp_path, caplog):
    """A city missing from gtFine when createPanopticImgs ran is missing from its JSON: its images
    would be left out of training and of every PQ without a word."""
    frames = {f: instance_ids(k) for k, f in enumerate(FRAMES + ("munster_000002_000019", "munster_000003_000019"))}
    write_gt_fine(tmp_path, "val", frames)
    ds = cityscapes_panoptic_dataset(_complete(tmp_path), "val", is_train=False)
    assert len(ds) == 4 and not [r for r in caplog.records if r.levelname == "WARNING"]

    import shutil

    shutil.rmtree(tmp_path / "gtFine")
    write_gt_fine(tmp_path, "val", {f: m for f, m in frames.items() if not f.startswith("munster")})
    create_panoptic_imgs(tmp_path, "val")
    caplog.clear()
    for use_train_id in (False, True):
        ds = cityscapes_panoptic_dataset(tmp_path, "val", use_train_id=use_train_id, is_train=False)
        assert len(ds) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(w.startswith(f"2 images under {tmp_path / 'leftImg8bit' / 'val'} have no "
                                                   "ground truth in ") for w in warnings)
    assert "(per city: munster (2))" in warnings[0]


def _complete(root: Path) -> Path:
    create_panoptic_imgs(root, "val")
    return root


def _rect(x0: int, y0: int, x1: int, y1: int) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_semantic_targets_equal_the_official_label_train_ids(tmp_path):
    """From the annotators' format on: a ``*_gtFine_polygons.json`` drawn by cityscapesscripts'
    json2labelImg (label ids, train ids) and createInstanceImage, then createPanopticImgs. Our
    semantic targets equal its ``*_gtFine_labelTrainIds.png`` pixel for pixel (the license plate
    stays car, groups keep their class, ignored labels are 255) and the instances are the
    non-group things."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    objects = [("sky", _rect(0, 0, 63, 15)), ("road", _rect(0, 16, 63, 31)), ("building", _rect(0, 2, 20, 10)),
               ("car", _rect(4, 18, 14, 24)), ("license plate", _rect(7, 22, 10, 23)), ("car", _rect(30, 18, 44, 26)),
               ("cargroup", _rect(20, 4, 34, 12)), ("persongroup", _rect(40, 4, 50, 12)),
               ("person", _rect(44, 6, 48, 14)), ("ego vehicle", [[0, 31], [63, 31], [63, 28], [30, 26], [0, 28]]),
               ("rectification border", _rect(0, 0, 1, 31)), ("caravan", _rect(50, 16, 60, 22)),
               ("polegroup", _rect(55, 0, 57, 15)), ("bicycle", _rect(16, 20, 28, 28)), ("rider", _rect(18, 14, 24, 24))]
    frame = FRAMES[0]
    gt_dir, img_dir = tmp_path / "gtFine" / "val" / "frankfurt", tmp_path / "leftImg8bit" / "val" / "frankfurt"
    gt_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    polygons = gt_dir / f"{frame}_gtFine_polygons.json"
    polygons.write_text(json.dumps({"imgHeight": H, "imgWidth": W,
                                    "objects": [{"label": name, "polygon": p} for name, p in objects]}))
    json2labelImg(str(polygons), str(gt_dir / f"{frame}_gtFine_labelIds.png"), "ids")
    json2labelImg(str(polygons), str(gt_dir / f"{frame}_gtFine_labelTrainIds.png"), "trainIds")
    annotation = Annotation()
    annotation.fromJsonFile(str(polygons))
    # json2instanceImg saves PIL mode "I", which Pillow 13 no longer writes as PNG: the same image as 16 bits
    instance = np.array(createInstanceImage(annotation, "ids")).astype(np.uint16)
    Image.fromarray(instance).save(gt_dir / f"{frame}_gtFine_instanceIds.png")
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(img_dir / f"{frame}_leftImg8bit.png")
    create_panoptic_imgs(tmp_path, "val")
    assert {26, 24} <= set(np.unique(instance).tolist())  # the two groups, as ids < 1000

    train_ids = np.array(Image.open(gt_dir / f"{frame}_gtFine_labelTrainIds.png")).astype(np.int64)
    for use_train_id in (False, True):
        ds = cityscapes_panoptic_dataset(tmp_path, "val", use_train_id=use_train_id, is_train=False)
        sample = ds[0]
        assert np.array_equal(sample["sem_seg"].numpy(), train_ids)
        thing_names = sorted(ds.metadata.category(ds.metadata.thing_ids[k]).name
                             for k in sample["instances"]["labels"].tolist())
        assert thing_names == ["bicycle", "car", "car", "person", "rider"]
