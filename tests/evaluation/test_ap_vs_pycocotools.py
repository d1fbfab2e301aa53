"""Box / mask AP of the COCOAP evaluator against pycocotools run as Detectron2's COCOEvaluator runs it.

The reference is built in the other tool's convention, not from panfpn's code: an instances JSON
as panopticapi's detection converter writes it (one RLE per thing segment, ``area`` its pixel
count, ``bbox`` its tight XYWH box, ``iscrowd`` kept) and a ``coco_instances_results.json`` as
Detectron2 writes it (COCO category ids, XYWH boxes from XYXY by float32 subtraction, RLE counts
as text), both written to disk and read back by pycocotools; then Detectron2's steps
(``coco_evaluation.py``): ``loadRes``, the box dropped for mask AP, ``maxDets = [1, 10, 100]``,
``stats * 100`` or nan, and per category the mean of ``precision[:, :, k, 0, -1]`` above -1.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import panfpn.evaluation.coco_ap as coco_ap
from panfpn.data.loader import ShardSampler
from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.evaluators import COCOAP

# things: person (GT everywhere), car, bus (detected but never in the ground truth), dog (crowd only)
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 6, "name": "bus", "isthing": 1}, {"id": 18, "name": "dog", "isthing": 1},
              {"id": 101, "name": "grass", "isthing": 0}, {"id": 120, "name": "sky", "isthing": 0}]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rect(ids: np.ndarray, seg_id: int, y0: int, x0: int, h: int, w: int) -> None:
    ids[y0:y0 + h, x0:x0 + w] = seg_id


def _images() -> list[dict]:
    """Five panoptic ground-truth images (id map + segments_info) with the cases that matter."""
    out = []
    # 1: a car of exactly 96^2 = 9216 pixels (medium and large's boundary), a person of exactly
    # 32^2 = 1024 (small and medium), a crowd of people, void pixels, two stuff regions
    ids = np.full((120, 160), 2, np.int32)
    ids[:40] = 3
    ids[110:, :] = 0
    _rect(ids, 10, 10, 10, 96, 96)
    _rect(ids, 11, 10, 110, 32, 32)
    _rect(ids, 12, 60, 110, 40, 40)
    out.append({"id": 1, "ids": ids, "segs": [(2, 101, 0), (3, 120, 0), (10, 3, 0), (11, 1, 0), (12, 1, 1)]})
    # 2: three people and a car of irregular shape (an L: its box holds pixels of other segments)
    ids = np.full((80, 100), 2, np.int32)
    _rect(ids, 20, 5, 5, 20, 12)
    _rect(ids, 21, 30, 40, 9, 7)
    _rect(ids, 22, 50, 60, 25, 30)
    _rect(ids, 23, 5, 50, 10, 40)
    _rect(ids, 23, 15, 80, 20, 10)
    out.append({"id": 2, "ids": ids, "segs": [(2, 101, 0), (20, 1, 0), (21, 1, 0), (22, 1, 0), (23, 3, 0)]})
    # 3: a large person (> 9216) and a crowd of dogs (dog has no other ground truth)
    ids = np.full((128, 128), 3, np.int32)
    _rect(ids, 30, 0, 0, 100, 110)
    _rect(ids, 31, 105, 0, 20, 60)
    out.append({"id": 3, "ids": ids, "segs": [(3, 120, 0), (30, 1, 0), (31, 18, 1)]})
    # 4: no thing at all (every detection there is a false positive)
    ids = np.full((60, 60), 2, np.int32)
    out.append({"id": 4, "ids": ids, "segs": [(2, 101, 0)]})
    # 5: two people and no detection at all
    ids = np.full((60, 70), 3, np.int32)
    _rect(ids, 50, 10, 10, 20, 20)
    _rect(ids, 51, 30, 40, 25, 20)
    out.append({"id": 5, "ids": ids, "segs": [(3, 120, 0), (50, 1, 0), (51, 1, 0)]})
    for im in out:  # segments_info as in a COCO-panoptic JSON: area and bbox of the PNG
        segs = []
        for seg_id, cat, crowd in im["segs"]:
            ys, xs = np.nonzero(im["ids"] == seg_id)
            segs.append({"id": seg_id, "category_id": cat, "iscrowd": crowd, "area": int(ys.size),
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)]})
        im["segs"] = segs
    return out


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.array(mask[:, :, None], order="F", dtype=np.uint8))[0]
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def _detections(images: list[dict], seed: int = 0) -> dict:
    """Per image: XYXY float32 boxes, float32 scores, dataset category ids, bool masks."""
    rng = np.random.RandomState(seed)
    dets = {}
    for im in images:
        h, w = im["ids"].shape
        boxes, scores, cats, masks = [], [], [], []

        def add(box, score, cat, mask):
            boxes.append(box)
            scores.append(score)
            cats.append(cat)
            masks.append(mask)

        if im["id"] != 5:
            for seg in im["segs"]:
                if seg["category_id"] not in (1, 3, 18):
                    continue
                x, y, bw, bh = seg["bbox"]
                for _ in range(2):  # a good and a duplicate, shifted, with tied or random scores
                    dx, dy = rng.uniform(-3, 3, 2)
                    box = [x + dx, y + dy, x + bw + dx * rng.uniform(0.5, 1.5), y + bh + dy]
                    mask = np.roll(im["ids"] == seg["id"], (int(round(dy)), int(round(dx))), axis=(0, 1))
                    add(box, rng.choice([0.9, 0.5, rng.uniform(0.05, 1)]), seg["category_id"], mask)
            n_false = 130 if im["id"] == 2 else 6  # image 2: more than 100 detections of person
            for _ in range(n_false):
                x0, y0 = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
                x1, y1 = min(w, x0 + rng.uniform(2, 60)), min(h, y0 + rng.uniform(2, 60))
                mask = np.zeros((h, w), bool)
                mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = rng.uniform() < 0.9
                cat = 1 if im["id"] == 2 else int(rng.choice([1, 3, 6]))
                add([x0, y0, x1, y1], round(rng.uniform(0.05, 1), 2), cat, mask)  # rounded: ties
        dets[im["id"]] = {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
                          "scores": np.array(scores, np.float32), "cats": np.array(cats, np.int64),
                          "masks": np.array(masks, bool).reshape(-1, h, w)}
    return dets


def _write_reference_files(images: list[dict], dets: dict, folder: Path) -> tuple[Path, Path]:
    """instances.json (panopticapi's detection conversion) and coco_instances_results.json
    (Detectron2's instances_to_coco_json, category ids already unmapped)."""
    anns = []
    for im in images:
        for seg in im["segs"]:
            if seg["category_id"] < 100:
                mask = im["ids"] == seg["id"]
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": seg["category_id"],
                             "iscrowd": seg["iscrowd"], "area": int(mask.sum()),
                             "bbox": [float(v) for v in mask_util.toBbox(_rle(mask))],
                             "segmentation": _rle(mask)})
    gt = {"images": [{"id": im["id"], "height": im["ids"].shape[0], "width": im["ids"].shape[1]}
                     for im in images],
          "annotations": anns,
          "categories": [{"id": c["id"], "name": c["name"]} for c in CATEGORIES if c["isthing"]]}
    results = []
    for image_id, d in dets.items():
        xywh = d["boxes"].copy()
        xywh[:, 2:] -= xywh[:, :2]  # in float32, as Detectron2's BoxMode.convert
        for k in range(len(xywh)):
            results.append({"image_id": image_id, "category_id": int(d["cats"][k]),
                            "bbox": xywh[k].tolist(), "score": float(d["scores"][k]),
                            "segmentation": _rle(d["masks"][k])})
    gt_path, res_path = folder / "instances.json", folder / "coco_instances_results.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def _detectron2_ap(gt_path: Path, res_path: Path) -> dict:
    """Detectron2's COCOEvaluator numbers (percent, nan where undefined) with official COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    results = json.loads(res_path.read_text())
    out = {}
    for task in ("bbox", "segm"):
        task_results = copy.deepcopy(results)
        if task == "segm":  # mask AP: the mask's area decides the size range, not the box's
            for r in task_results:
                del r["bbox"]
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(task_results), task)
            ev.params.maxDets = [1, 10, 100]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[task] = {m: (100 * s if s >= 0 else math.nan) for m, s in zip(METRICS, ev.stats[:6])}
        precision = ev.eval["precision"]
        for k, cat_id in enumerate(sorted(gt.getCatIds())):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[task][f"AP-{cat_id}"] = 100 * float(p.mean()) if p.size else math.nan
    return out


def _as_detectron2(ours: dict) -> dict:
    """Our results in Detectron2's form: percent, nan for COCOeval's -1 and per-class None."""
    out = {}
    for task in ("bbox", "segm"):
        out[task] = {m: (100 * ours[task][m] if ours[task][m] >= 0 else math.nan) for m in METRICS}
        for cat_id, ap in ours[task]["per_class"].items():
            out[task][f"AP-{cat_id}"] = 100 * ap if ap is not None else math.nan
    return out


def _evaluator_outputs(images: list[dict], dets: dict, metadata: DatasetMetadata) -> list:
    """What COCOAP.process reads of each image: the model's instances in contiguous labels."""
    outputs = []
    for im in images:
        d = dets[im["id"]]
        labels = torch.tensor([metadata.thing_ids.index(int(c)) for c in d["cats"]], dtype=torch.int64)
        outputs.append(SimpleNamespace(
            image_id=im["id"], gt_map=torch.from_numpy(im["ids"]), gt_segments=im["segs"],
            output={"instances": {"boxes": torch.from_numpy(d["boxes"]), "scores": torch.from_numpy(d["scores"]),
                                  "labels": labels, "masks": torch.from_numpy(d["masks"])}}))
    return outputs


def _assert_same(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference)
    for task in reference:
        assert set(ours[task]) == set(reference[task]), task
        for key, value in reference[task].items():
            if math.isnan(value):
                assert math.isnan(ours[task][key]), (task, key, ours[task][key])
            else:
                assert ours[task][key] == pytest.approx(value, abs=1e-10), (task, key)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    images = _images()
    dets = _detections(images)
    reference = _detectron2_ap(*_write_reference_files(images, dets, tmp_path_factory.mktemp("ap")))
    return images, dets, reference


def test_the_case_holds_what_it_is_meant_to(case):
    images, dets, reference = case
    assert len(dets[2]["scores"]) > 100 and len(dets[5]["scores"]) == 0
    for task in ("bbox", "segm"):
        assert math.isnan(reference[task]["AP-6"]) and math.isnan(reference[task]["AP-18"])  # no GT
        assert 0 < reference[task]["AP"] < 100
        assert all(not math.isnan(reference[task][m]) for m in METRICS)


def test_box_and_mask_ap_equal_detectron2s_cocoevaluator(case):
    images, dets, reference = case
    metadata = DatasetMetadata.from_coco_categories(CATEGORIES)
    evaluator = COCOAP(metadata)
    evaluator.reset()
    evaluator.process({}, _evaluator_outputs(images, dets, metadata))
    _assert_same(_as_detectron2(evaluator.evaluate()), reference)


def test_ranks_with_uneven_shards_give_the_single_process_numbers(case, monkeypatch):
    # 5 images on 3 ranks (2 + 2 + 1): every rank's images, ground truth and detections are
    # gathered once; none lost, none counted twice
    images, dets, reference = case
    metadata = DatasetMetadata.from_coco_categories(CATEGORIES)
    outputs = _evaluator_outputs(images, dets, metadata)
    ranks = []
    for rank in range(3):
        evaluator = COCOAP(metadata)
        evaluator.reset()
        shard = list(ShardSampler(len(images), rank, 3))
        evaluator.process({}, [outputs[i] for i in shard])
        ranks.append(evaluator)
    assert sorted(i for r in range(3) for i in ShardSampler(len(images), r, 3)) == list(range(5))
    parts = [(e.ap.images, e.ap.gt, e.ap.dets, e.ap.with_masks) for e in ranks]
    monkeypatch.setattr(coco_ap, "is_multiprocess", lambda: True)
    monkeypatch.setattr(coco_ap, "all_gather_objects", lambda obj: parts)
    _assert_same(_as_detectron2(ranks[1].evaluate()), reference)


SAMPLE = Path(__file__).parents[1] / "assets" / "coco_panoptic_sample"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2
def test_detectron2_results_scored_as_docs_evaluation_md_says_give_our_numbers(tmp_path):
    # docs/evaluation.md: Detectron2's coco_instances_results.json against instances_from_panoptic's
    # instances, by pycocotools, gives eval_results.json's AP (two real COCO val images)
    from panfpn.data.panoptic_io import read_id_png
    from panfpn.evaluation import instances_from_panoptic

    panoptic = json.loads((SAMPLE / "panoptic_examples.json").read_text())
    metadata = DatasetMetadata.from_coco_categories(panoptic["categories"])
    rng = np.random.RandomState(1)
    images, dets = [], {}
    for ann in panoptic["annotations"]:
        ids = read_id_png(SAMPLE / "panoptic_examples" / ann["file_name"])
        images.append({"id": ann["image_id"], "ids": ids, "segs": ann["segments_info"]})
        boxes, scores, cats, masks = [], [], [], []
        for seg in ann["segments_info"]:
            if seg["category_id"] in metadata.thing_ids and rng.uniform() < 0.8:  # some missed
                x, y, w, h = seg["bbox"]
                d = rng.uniform(-0.2, 0.2, 4) * [w, h, w, h]
                boxes.append([x + d[0], y + d[1], x + w + d[2], y + h + d[3]])
                masks.append(np.roll(ids == seg["id"], rng.randint(-4, 5, 2), axis=(0, 1)))
                scores.append(rng.uniform(0.05, 1))
                cats.append(seg["category_id"] if rng.uniform() < 0.9 else metadata.thing_ids[0])
        dets[ann["image_id"]] = {"boxes": np.array(boxes, np.float32), "scores": np.array(scores, np.float32),
                                 "cats": np.array(cats, np.int64), "masks": np.array(masks, bool)}
    evaluator = COCOAP(metadata)
    evaluator.reset()
    evaluator.process({}, _evaluator_outputs(images, dets, metadata))
    ours = evaluator.evaluate()

    _, results_path = _write_reference_files(images, dets, tmp_path)  # its instances.json unused
    gt = COCO()
    gt.dataset = instances_from_panoptic(SAMPLE / "panoptic_examples.json")
    gt.dataset = json.loads(json.dumps(gt.dataset))  # as a file holds it
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = json.loads(results_path.read_text())
    for task in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if task == "bbox" or k != "bbox"}
                                          for r in results]), task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert 0 < ev.stats[0] < 1
        assert [ours[task][m] for m in METRICS] == pytest.approx(list(ev.stats[:6]), abs=1e-12), task
