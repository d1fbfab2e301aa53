"""`data=coco_panoptic_folder data.root=DIR`: a custom COCO-panoptic folder trains and evaluates
with its categories, class counts and thing labels read from the train JSON, no yaml written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from config_helpers import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError

from panfpn.data.synthetic import generate_dataset, synthetic_metadata


# Synthetic category id -> the custom dataset's: 3 things (triangle and ring merged), 4 stuff plus
# a stuff class without pixels, other ids and names than the synthetic defaults (4 things, 4 stuff).
REMAP = {1: 40, 3: 41, 7: 42, 12: 42, 101: 5, 105: 6, 130: 7, 200: 8}
CATEGORIES = [
    {"id": 40, "name": "cup", "isthing": 1, "color": [200, 30, 30]},
    {"id": 41, "name": "plate", "isthing": 1, "color": [30, 200, 30]},
    {"id": 42, "name": "fork", "isthing": 1, "color": [30, 30, 200]},
    {"id": 5, "name": "table", "isthing": 0, "color": [90, 60, 30]},
    {"id": 6, "name": "wall", "isthing": 0, "color": [120, 120, 120]},
    {"id": 7, "name": "floor", "isthing": 0, "color": [60, 60, 60]},
    {"id": 8, "name": "window", "isthing": 0, "color": [150, 200, 250]},
    {"id": 9, "name": "sky", "isthing": 0, "color": [100, 150, 250]},
]


def _custom_split(tmp: Path, root: Path, split: str, n: int, seed: int, *, json_name: str,
                  image_dir: str) -> None:
    """A synthetic split with the custom categories, moved into ``root``'s layout."""
    src = generate_dataset(tmp / f"gen_{split}", n, seed, height=64, width=64)
    data = json.loads((src / "panoptic.json").read_text())
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            seg["category_id"] = REMAP[seg["category_id"]]
    data["categories"] = CATEGORIES
    json_file = root / "annotations" / json_name
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(data))
    shutil.move(str(src / "panoptic"), json_file.with_suffix(""))
    (root / image_dir).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src / "images"), root / image_dir)


@pytest.fixture
def custom_root(tmp_path) -> Path:
    """DIR/annotations/panoptic_{train,val}.json + PNG folders, DIR/images/{train,val}."""
    root = tmp_path / "mydata"
    _custom_split(tmp_path, root, "train", 6, 0, json_name="panoptic_train.json", image_dir="images/train")
    _custom_split(tmp_path, root, "val", 3, 1, json_name="panoptic_val.json", image_dir="images/val")
    return root


def _compose(*overrides: str):
    return compose_config(overrides)


TINY = [  # the small model, 64 px images, 4 iterations, evaluation at the end
    "data.train.transforms.transforms.0.short_edge_lengths=[64]",
    "data.train.transforms.transforms.0.max_size=128",
    "data.val.transforms.short_edge_lengths=[64]", "data.val.transforms.max_size=128",
    "data.batch_size=2", "data.num_workers=0",
    "solver=synthetic_sgd", "solver.max_iter=4", "solver.schedule.steps=[3]",
    "solver.schedule.warmup_iters=2",
    "train.log_period=1", "train.checkpoint_period=100", "train.progress_bar=false", "eval.max_images=2",
]


def test_counts_and_metadata_come_from_the_train_json(custom_root):
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}")
    assert cfg.data.num_thing_classes == 3 and cfg.data.num_sem_classes == 6
    assert list(cfg.data.thing_sem_labels) == [5]
    assert cfg.model.roi_heads.box_head.num_classes == 3 and cfg.model.semantic_head.num_classes == 6
    from panfpn.engine.job_setup import build_metadata

    meta = build_metadata(cfg)  # instantiates data.metadata and compares the counts
    assert meta.thing_ids == [40, 41, 42] and meta.stuff_ids == [5, 6, 7, 8, 9]
    train = instantiate(cfg.data.train)
    assert train.metadata == meta and train.image_root == custom_root / "images" / "train"
    assert train.panoptic_root == custom_root / "annotations" / "panoptic_train"
    sample = train[0]
    assert set(sample["instances"]["labels"].tolist()) <= {0, 1, 2}
    assert int(sample["sem_seg"][sample["sem_seg"] != 255].max()) <= 5
    cfg_all = _compose("data=coco_panoptic_folder", f"data.root={custom_root}", "data.sem_seg_mode=all")
    # 'all': a label per category in id order, so things 40-42 come after stuff 5-9
    assert cfg_all.data.num_sem_classes == 8 and list(cfg_all.data.thing_sem_labels) == [5, 6, 7]


def test_custom_folder_trains_then_evaluates(custom_root, tmp_path):
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.engine.train_run import train_from_config

    base = ["data=coco_panoptic_folder", f"data.root={custom_root}", *TINY]
    result = train_from_config(_compose(*base, f"output_dir={tmp_path / 'run'}"))
    assert result["iteration"] == 4 and result["eval"] is not None
    per_class = result["eval"]["panoptic"]["per_class"]
    assert {int(k) for k in per_class} <= {c["id"] for c in CATEGORIES}
    weights = tmp_path / "run" / "model_final.pth"
    metrics = evaluate_from_config(_compose(*base, f"weights={weights}", f"output_dir={tmp_path / 'eval'}"))
    assert 0.0 <= metrics["panoptic"]["All"]["pq"] <= 1.0
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    # The evaluated split is the val JSON, not the label set's name (the train JSON's stem): the
    # report and compare.html said 'dataset panoptic_train' for an evaluation of the val split.
    context = saved["context"]
    assert context["dataset"] == f"coco_panoptic_folder ({custom_root / 'annotations' / 'panoptic_val.json'})"
    assert context["labels"] == "panoptic_train: 8 categories (recorded in the checkpoint)"
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "<title>Panoptic evaluation: model_final.pth on coco_panoptic_folder val</title>" in page


def test_val_with_other_categories_is_refused(custom_root):
    val_json = custom_root / "annotations" / "panoptic_val.json"
    data = json.loads(val_json.read_text())
    # a category the train JSON lacks (listing only some of them is accepted: test_dataset_validation)
    data["categories"].append({"id": 999, "name": "extra", "isthing": 1})
    val_json.write_text(json.dumps(data))
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}")
    instantiate(cfg.data.train)
    with pytest.raises(InstantiationException, match=r"panoptic_val\.json: its categories differ from the "
                                                     r"metadata 'panoptic_train'.*ids only in the JSON: \[999\].*"
                                                     r"point it at the JSON listing every category"):
        instantiate(cfg.data.val)
    # what the message says to do: the val JSON's categories for both splits (train lists some)
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}",
                   f"data.metadata.json_file={val_json}")
    assert 999 in [c.id for c in instantiate(cfg.data.train).metadata.categories]
    assert len(instantiate(cfg.data.val)) > 0


def test_coco_names_and_explicit_paths(tmp_path):
    coco = tmp_path / "coco"
    _custom_split(tmp_path, coco, "val", 2, 1, json_name="panoptic_val2017.json", image_dir="val2017")
    _custom_split(tmp_path, coco, "train", 2, 0, json_name="panoptic_train2017.json", image_dir="train2017")
    cfg = _compose("data=coco_panoptic_folder", f"data.root={coco}")
    assert cfg.data.train.json_file == str(coco / "annotations" / "panoptic_train2017.json")
    assert len(instantiate(cfg.data.val)) == 2 and cfg.data.num_thing_classes == 3
    # another layout: explicit paths, no root
    other = tmp_path / "other"
    shutil.copytree(coco, other)
    (other / "annotations" / "panoptic_val2017.json").rename(other / "v.json")
    cfg = _compose("data=coco_panoptic_folder",
                   f"data.train.json_file={other}/annotations/panoptic_train2017.json",
                   f"data.train.image_dir={other}/train2017", f"data.val.json_file={other}/v.json",
                   f"data.val.png_dir={other}/annotations/panoptic_val2017",
                   f"data.val.image_dir={other}/val2017")
    assert len(instantiate(cfg.data.train)) == 2 and len(instantiate(cfg.data.val)) == 2
    cfg = _compose("data=coco_panoptic_folder")
    with pytest.raises(InterpolationResolutionError,
                       match=r"'data.metadata.json_file' is null.*set data.root"):
        cfg.data.num_thing_classes  # noqa: B018 - resolving it is the test
    with pytest.raises(InstantiationException, match=r"'data.metadata.json_file' is null"):
        instantiate(cfg.data.train)
    meta = f"data.metadata.json_file={coco}/annotations/panoptic_train2017.json"
    with pytest.raises(InstantiationException, match=r"config key 'data.root' is not set"):
        instantiate(_compose("data=coco_panoptic_folder", meta).data.train)
    cfg = _compose("data=coco_panoptic_folder", f"data.root={tmp_path}", meta)
    with pytest.raises(InstantiationException,
                       match=r"no val annotations under data.root=.*panoptic_val\.json"):
        instantiate(cfg.data.val)


def test_evaluation_without_the_train_split(custom_root, tmp_path):
    """Only the val split on disk: the metadata is read from the val JSON instead."""
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.engine.train_run import train_from_config

    base = ["data=coco_panoptic_folder", f"data.root={custom_root}", *TINY]
    train_from_config(_compose(*base, "solver.max_iter=1", "solver.schedule.steps=[]",
                   "solver.schedule.warmup_iters=0", "train.eval_period=-1", f"output_dir={tmp_path / 'run'}"))
    shutil.rmtree(custom_root / "images" / "train")
    (custom_root / "annotations" / "panoptic_train.json").unlink()
    val_json = custom_root / "annotations" / "panoptic_val.json"
    metrics = evaluate_from_config(_compose(*base, f"data.metadata.json_file={val_json}",
                                            f"weights={tmp_path / 'run' / 'model_final.pth'}",
                                            f"output_dir={tmp_path / 'eval'}"))
    assert 0.0 <= metrics["panoptic"]["All"]["pq"] <= 1.0


def test_synthetic_defaults_differ_from_the_custom_categories():
    """Guards the premise of these tests: the counts really differ from the synthetic set's."""
    meta = synthetic_metadata()
    assert (meta.num_thing_classes, meta.num_sem_classes) != (3, 6)


def test_json_categories_are_parsed_once_per_file_version(custom_root, monkeypatch):
    from panfpn.data import folder

    calls = []
    real = folder.load_json
    monkeypatch.setattr(folder, "load_json", lambda p, **kw: calls.append(p) or real(p, **kw))
    json_file = custom_root / "annotations" / "panoptic_train.json"
    for key in ("num_thing_classes", "num_sem_classes", "thing_sem_labels", "num_thing_classes"):
        folder.json_meta_value(str(json_file), key)
    assert len(calls) == 1
    data = json.loads(json_file.read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] != 9]  # a new version of the file
    json_file.write_text(json.dumps(data))
    calls.clear()
    assert folder.json_meta_value(str(json_file), "num_sem_classes") == 5 and len(calls) == 1
    assert folder.json_meta_value(str(json_file), "num_sem_classes") == 5 and len(calls) == 1


def _truncate_one_image(root: Path) -> Path:
    image = sorted((root / "images" / "train").iterdir())[1]
    image.write_bytes(image.read_bytes()[:200])  # a cut-off download
    return image


def test_training_run_names_a_truncated_image(custom_root, tmp_path):
    from panfpn.engine.train_run import train_from_config

    bad = _truncate_one_image(custom_root)
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}", *TINY, "train.eval_period=-1",
                   f"output_dir={tmp_path / 'run'}")
    with pytest.raises(Exception, match=rf"image id \d+ of .*{bad.name}: cannot read") as err:
        train_from_config(cfg)
    assert "skip_bad_images" in str(err.value)
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_training_run_skips_and_lists_a_truncated_image(custom_root, tmp_path):
    from panfpn.engine.train_run import train_from_config

    bad = _truncate_one_image(custom_root)
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}", *TINY, "train.eval_period=-1",
                   "data.skip_bad_images=true", f"output_dir={tmp_path / 'run'}")
    assert train_from_config(cfg)["iteration"] == 4
    lines = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0] == str(bad)


def test_a_missing_val_split_names_how_to_train_without_it(tmp_path):
    # a team with only a train export: the error said where it looked, not how to go on
    from panfpn.data.folder import find_split_json

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "panoptic_train.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no val annotations under .*panoptic_val2017\.json; "
                                                 r"set data\.val\.json_file=PATH for another layout; a "
                                                 r"training without a val split: train\.eval_period=-1"):
        find_split_json(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"another layout$"):
        find_split_json(tmp_path, "test")


def test_a_stuff_only_label_set_is_refused_when_the_model_is_built(custom_root):
    # an export with no isthing=1 category (a pure 'stuff' labelling job): the box and mask heads
    # were built with 0 outputs and training stopped at the first step with a conv2d traceback
    # (data.train.filter_empty=false), or with a filter_empty error that did not say why
    from panfpn.modeling.build import instantiate_model
    from panfpn.utils.errors import ConfigError

    for split in ("train", "val"):
        json_file = custom_root / "annotations" / f"panoptic_{split}.json"
        data = json.loads(json_file.read_text())
        data["categories"] = [c for c in data["categories"] if not c["isthing"]]
        for ann in data["annotations"]:
            ann["segments_info"] = [s for s in ann["segments_info"] if s["category_id"] < 40]
        json_file.write_text(json.dumps(data))
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}", "model=panoptic_fpn_small",
                   "data.train.filter_empty=false")
    assert cfg.data.num_thing_classes == 0
    with pytest.raises((ConfigError, InstantiationException),
                       match=r"model\.roi_heads\.box_head\.num_classes=0: Panoptic FPN needs at least one "
                             r"thing category \(isthing=1\)"):
        instantiate_model(cfg)


def test_a_split_whose_things_are_all_crowd_names_the_key_that_keeps_its_images(custom_root):
    # an export marking every object iscrowd=1 (a 'group' tool): the error named filter_empty,
    # not the config key that trains on the images anyway
    json_file = custom_root / "annotations" / "panoptic_train.json"
    data = json.loads(json_file.read_text())
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            seg["iscrowd"] = int(seg["category_id"] >= 40)
    json_file.write_text(json.dumps(data))
    cfg = _compose("data=coco_panoptic_folder", f"data.root={custom_root}")
    with pytest.raises(InstantiationException, match=r"panoptic_train\.json: no image has a non-crowd thing "
                                                     r"segment.*\(data\.train\.filter_empty=false keeps every "
                                                     r"image\)"):
        instantiate(cfg.data.train)
    assert len(instantiate(_compose("data=coco_panoptic_folder", f"data.root={custom_root}",
                                    "data.train.filter_empty=false").data.train)) == 6
