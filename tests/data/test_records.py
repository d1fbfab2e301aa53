"""Compact records (panfpn.data.records) give exactly the samples the list of records gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.data.builtin_meta import coco_panoptic_metadata
from panfpn.data.dataset import PanopticDataset
from panfpn.utils.json_file import load_json
from panfpn.data.records import Record, RecordStore
from panfpn.data.synthetic import generate_dataset
from panfpn.data.validate import check_categories, index_images, pair_annotations

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "coco_panoptic_sample"


def list_records(json_file: Path) -> list[Record]:
    """The records as the dataset kept them before RecordStore: a list parsed from the JSON."""
    data = load_json(json_file)
    cats = check_categories(data["categories"], json_file)
    images = index_images(data["images"], json_file)
    return [Record(*row) for row in pair_annotations(data["annotations"], images, json_file, cats)]


def assert_same_sample(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value) and got[key].dtype == value.dtype, key
        elif isinstance(value, dict):
            assert_same_sample(got[key], value)
        else:
            assert got[key] == value and type(got[key]) is type(value), key


def assert_same_as_list(ds_factory, json_file: Path) -> None:
    """Every record and every sample of the compact dataset equal the list-of-records ones."""
    want = list_records(json_file)
    for record_cache in (False, True, True):  # no cache; cache written; cache read
        ds = ds_factory(record_cache)
        assert isinstance(ds.records, RecordStore)
        assert list(ds.records) == want and len(ds) == len(want)
        assert [type(r.image_id) for r in ds.records] == [type(r.image_id) for r in want]
        reference = ds_factory(False)
        reference.records = want  # the dataset as it was: a list of records
        for i in range(len(ds)):
            assert_same_sample(ds[i], reference[i])


def test_real_coco_sample_gives_the_same_samples(tmp_path):
    json_file = SAMPLE / "panoptic_examples.json"

    def factory(record_cache):
        return PanopticDataset(json_file, SAMPLE / "input_images", SAMPLE / "panoptic_examples",
                               metadata=coco_panoptic_metadata(), is_train=False,
                               record_cache=record_cache, cache_dir=tmp_path / "cache")

    assert_same_as_list(factory, json_file)
    assert len(list((tmp_path / "cache" / "records").glob("*.npy"))) == 1


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("gen") / "ds", 300, 3, height=32, width=32)


@pytest.mark.parametrize("is_train", [True, False])
def test_generated_data_gives_the_same_samples(generated, tmp_path, is_train):
    def factory(record_cache):
        return PanopticDataset(generated / "panoptic.json", generated / "images",
                               generated / "panoptic", is_train=is_train,
                               record_cache=record_cache, cache_dir=tmp_path / "cache")

    want = list_records(generated / "panoptic.json")
    assert len(want) == 300 and any(s.get("iscrowd") for r in want for s in r.segments)
    assert_same_as_list(factory, generated / "panoptic.json")


def test_filter_empty_keeps_the_same_images(generated, tmp_path):
    json_file = generated / "panoptic.json"
    for record_cache in (False, True, True):
        ds = PanopticDataset(json_file, generated / "images", generated / "panoptic",
                             filter_empty=True, record_cache=record_cache, cache_dir=tmp_path)
        meta_things = set(ds.metadata.thing_ids)
        want = [r for r in list_records(json_file) if any(
            s["category_id"] in meta_things and not s.get("iscrowd", 0) for s in r.segments)]
        assert 0 < len(want) < 300  # the seed gives images without things
        assert list(ds.records) == want


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    """createPanopticImgs output (string image ids, city folders) of two tiny frames."""
    csp = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
    root = tmp_path_factory.mktemp("cs")
    for k, frame in enumerate(("aachen_000000_000019", "bremen_000001_000019")):
        city = frame.split("_")[0]
        for sub in ("gtFine", "leftImg8bit"):
            (root / sub / "train" / city).mkdir(parents=True)
        ids = np.full((16, 32), 7, dtype=np.uint16)  # road (label id 7)
        ids[2:8, 3:9] = 26000 + k  # a car instance: label 26 * 1000 + n
        ids[9:14, 20:30] = 24  # a person crowd region (label id, no instance number)
        Image.fromarray(ids).save(root / "gtFine" / "train" / city / f"{frame}_gtFine_instanceIds.png")
        Image.fromarray(np.full((16, 32, 3), 40 * k, np.uint8)).save(
            root / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png")
    csp.convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(root / "gtFine"),
                         useTrainId=False, setNames=["train"])
    return root


def test_cityscapes_string_ids_give_the_same_samples(cityscapes, tmp_path):
    json_file = cityscapes / "gtFine" / "cityscapes_panoptic_train.json"

    def factory(record_cache):
        return PanopticDataset(json_file, cityscapes / "leftImg8bit" / "train",
                               cityscapes / "gtFine" / "cityscapes_panoptic_train",
                               sem_seg_mode="all", is_train=False,
                               record_cache=record_cache, cache_dir=tmp_path)

    want = list_records(json_file)
    assert [r.image_id for r in want] == ["aachen_000000_000019", "bremen_000001_000019"]
    assert_same_as_list(factory, json_file)


def test_store_is_a_read_only_sequence():
    rows = [(1, "a.jpg", "a.png", ({"id": 1, "category_id": 1},), (480, None)),  # the JSON's (height, width)
            ("x_1", "é.jpg", "b.png", ({"id": 2, "category_id": 2, "iscrowd": 1, "f": 0.1},), None)]
    store = RecordStore.from_rows(rows, {1: True, 2: True})
    assert [tuple(vars(r).values()) for r in store] == rows
    assert store[-1].image_id == "x_1" and store[0:1] == [store[0]]
    assert store.thing_flags().tolist() == [True, False]  # the second is crowd
    assert [r.image_id for r in store.select(np.array([1, 0]))] == ["x_1", 1]
    with pytest.raises(IndexError, match="record index 2 out of range for 2"):
        store[2]
    assert store.data.dtype == np.uint8 and store.offsets.tolist()[0] == 0
