"""PanopticPredictionWriter output is valid COCO-panoptic: read back by pq_compute and hotcoco."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation import (PanopticPredictionWriter, PQAccumulator, model_segments_to_dataset,
                               pq_compute)
from panfpn.data.panoptic_io import rgb_to_id
from pq_case_gen import CATEGORIES, assert_same, make_case, write_panoptic

META = DatasetMetadata.from_coco_categories(CATEGORIES)


def _as_model_output(pred: np.ndarray, segments: list[dict]) -> dict:
    """Turn a dataset-id prediction into the model's contiguous-id output (interfaces.md s.3)."""
    remap = {old: new for new, old in enumerate(sorted(s["id"] for s in segments), start=1)}
    id_map = np.zeros(pred.shape, np.int32)
    for old, new in remap.items():
        id_map[pred == old] = new
    out = []
    for s in segments:
        cat = META.category(s["category_id"])
        label = META.thing_label(cat.id) if cat.isthing else META.sem_label(cat.id)
        out.append({"id": remap[s["id"]], "isthing": cat.isthing, "category": label,
                    "score": 0.9 if cat.isthing else None, "area": int((pred == s["id"]).sum())})
    return {"panoptic": (torch.from_numpy(id_map), out)}


def test_model_segments_to_dataset_round_trip():
    segs = [{"id": 1, "isthing": True, "category": 2, "score": 0.7},
            {"id": 2, "isthing": False, "category": 1, "score": None}]
    out = model_segments_to_dataset(segs, META)
    assert [s["category_id"] for s in out] == [META.thing_ids[2], META.stuff_ids[1]]
    assert out[0]["score"] == pytest.approx(0.7) and "score" not in out[1]
    with pytest.raises(ValueError, match="merged 'thing'"):
        merged_thing = META.num_sem_classes - 1
        model_segments_to_dataset([{"id": 1, "isthing": False, "category": merged_thing}], META)


def test_written_files_evaluate_like_the_in_memory_accumulator(tmp_path):
    rng = np.random.default_rng(3)
    cases = [make_case(rng) for _ in range(25)]
    # Integer image ids: hotcoco reads no others (string ids are covered by test_pq_errors).
    gt_json = write_panoptic(tmp_path, "gt", [(i, g, gs) for i, (g, gs, _, _) in enumerate(cases)])
    acc = PQAccumulator(CATEGORIES)
    with PanopticPredictionWriter(tmp_path / "out", META) as writer:
        for i, (gt, gs, pred, ps) in enumerate(cases):
            output = _as_model_output(pred, ps)
            id_map, segs = output["panoptic"]
            ann = writer.add(i, f"dir/{i}.jpg", id_map, model_segments_to_dataset(segs, META))
            acc.update(id_map, model_segments_to_dataset(segs, META), torch.from_numpy(gt), gs,
                       image_id=i)
            assert ann["file_name"] == f"{i:012d}.png"  # COCO's file stem of image id i
    pred_json = tmp_path / "out" / "panoptic_pred.json"
    assert not list((tmp_path / "out").rglob("*.tmp*"))  # atomic writes left nothing behind
    from_files = pq_compute(gt_json, pred_json, workers=1)
    assert_same(from_files, acc.compute())

    PanopticEval = pytest.importorskip("hotcoco.panoptic").PanopticEval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = PanopticEval(str(gt_json), str(pred_json))
        ev.evaluate()
    assert_same(from_files, ev.results())


def test_png_area_and_bbox_match_the_pixels(tmp_path):
    id_map = np.zeros((7, 9), np.int64)
    id_map[1:4, 2:8] = 3
    id_map[5, 0] = 3  # a second, detached piece of segment 3
    id_map[4:7, 4:6] = 70001  # uses the G and B channels
    writer = PanopticPredictionWriter(tmp_path, CATEGORIES, name="p")
    ann = writer.add(42, "x.jpg", id_map, [{"id": 3, "category_id": 1},
                                           {"id": 70001, "category_id": 101},
                                           {"id": 8, "category_id": 3}])  # 8 has no pixel
    writer.write_json()
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["annotations"] == [ann]
    assert data["images"] == [{"id": 42, "file_name": "x.jpg", "height": 7, "width": 9}]
    assert {c["id"] for c in data["categories"]} == {c["id"] for c in CATEGORIES}
    segs = {s["id"]: s for s in ann["segments_info"]}
    assert set(segs) == {3, 70001}
    for seg_id, seg in segs.items():
        ys, xs = np.nonzero(id_map == seg_id)
        assert seg["area"] == ys.size and seg["iscrowd"] == 0
        assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    png = np.array(Image.open(tmp_path / "p" / "000000000042.png"))
    assert png.shape == (7, 9, 3) and np.array_equal(rgb_to_id(png), id_map)


def test_bad_writer_input_is_named(tmp_path):
    writer = PanopticPredictionWriter(tmp_path, META)
    id_map = np.ones((3, 3), np.int32)
    with pytest.raises(ValueError, match="image 'a'.*ids \\[1\\]"):
        writer.add("a", "a.jpg", id_map, [])
    with pytest.raises(ValueError, match="image 'b'.*unknown category_id 5"):
        writer.add("b", "b.jpg", id_map, [{"id": 1, "category_id": 5}])
    with pytest.raises(ValueError, match="image 'c'.*integer"):
        writer.add("c", "c.jpg", id_map.astype(float), [{"id": 1, "category_id": 1}])


def _stripes(k: int) -> np.ndarray:
    id_map = np.zeros((4, 6), np.int32)
    id_map[:, k % 6] = 1
    return id_map


def test_images_sharing_a_file_stem_keep_their_own_png(tmp_path):
    """a/000001.jpg and b/000001.jpg (different image ids) used to write one 000001.png."""
    writer = PanopticPredictionWriter(tmp_path, CATEGORIES, name="p")
    items = [(1, "a/000001.jpg"), (2, "b/000001.jpg"),
             ("frankfurt_000000_000019", "x/frankfurt_000000_000019_leftImg8bit.png"),
             ("lindau_000000_000019", "y/frankfurt_000000_000019_leftImg8bit.png")]
    for k, (image_id, file_name) in enumerate(items):
        writer.add(image_id, file_name, _stripes(k), [{"id": 1, "category_id": 1}])
    writer.write_json()
    data = json.loads((tmp_path / "p.json").read_text())
    names = [a["file_name"] for a in data["annotations"]]
    assert names == ["000000000001.png", "000000000002.png", "frankfurt_000000_000019.png",
                     "lindau_000000_000019.png"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(names)
    for k, name in enumerate(names):  # each PNG holds its own image's map, none overwritten
        assert np.array_equal(rgb_to_id(np.array(Image.open(tmp_path / "p" / name))), _stripes(k))


def test_a_reused_file_name_is_an_error_not_an_overwrite(tmp_path):
    writer = PanopticPredictionWriter(tmp_path, CATEGORIES, name="p")
    writer.add("a/b", "1.jpg", _stripes(0), [{"id": 1, "category_id": 1}])
    with pytest.raises(ValueError, match="image 'a_b'.*a_b.png would overwrite the one of image 'a/b'") as err:
        writer.add("a_b", "2.jpg", _stripes(1), [{"id": 1, "category_id": 1}])
    # a user's ids (an exporter's 'cam0/frame' and 'cam0_frame'): tools/eval.py printed a traceback;
    # now its one line (a known input error) that says what to change
    from panfpn.engine.tool_errors import input_error

    assert input_error(err.value) is err.value and "give the two images distinct ids" in str(err.value)
    with pytest.raises(ValueError, match=r"image id '' gives no usable file name") as err:  # was a traceback too
        writer.add("", "3.jpg", _stripes(1), [{"id": 1, "category_id": 1}])
    assert input_error(err.value) is err.value
    with pytest.raises(ValueError, match="image 'a/b'.*written twice"):
        writer.add("a/b", "1.jpg", _stripes(1), [{"id": 1, "category_id": 1}])
    assert np.array_equal(rgb_to_id(np.array(Image.open(tmp_path / "p" / "a_b.png"))), _stripes(0))


def test_thing_scores_are_written_in_the_json(tmp_path):
    """Eval's writer used to drop the scores predict added by hand; both now share the writer's."""
    writer = PanopticPredictionWriter(tmp_path, META, name="p")
    id_map = np.zeros((4, 6), np.int32)
    id_map[:2] = 1
    id_map[2:] = 2
    segs = model_segments_to_dataset([{"id": 1, "isthing": True, "category": 0, "score": 0.625},
                                      {"id": 2, "isthing": False, "category": 0, "score": None}], META)
    writer.add(7, "7.jpg", id_map, segs)
    writer.write_json()
    info = {s["id"]: s for s in json.loads((tmp_path / "p.json").read_text())["annotations"][0]["segments_info"]}
    assert info[1]["score"] == 0.625 and "score" not in info[2]
