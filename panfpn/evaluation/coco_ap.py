"""COCO box and mask AP through pycocotools, with the instance ground truth taken from panoptic GT.

No separate instances JSON is needed: thing segments of the panoptic ground truth become
instances (``iscrowd`` kept, ``area`` and ``bbox`` from ``segments_info`` or, where it has none,
from the id map, the mask from the id map as RLE), stuff segments are left out. Predictions are
plain arrays per image.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from panfpn.data.panoptic_io import read_id_png, segment_areas_boxes
from panfpn.utils.dist import all_gather_objects, is_multiprocess
from panfpn.utils.json_file import load_json

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def ap_text(value: float) -> str:
    """An AP fraction as printed percent; ``n/a`` for COCOeval's -1 (no ground truth to average over,
    which Detectron2 prints as nan), never ``-100.00``."""
    return f"{100 * value:.2f}" if value >= 0 else "n/a"


def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _thing_categories(categories: Sequence[Mapping[str, Any]]) -> list[dict]:
    return [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))}
            for c in categories if int(c["isthing"]) == 1]


def instances_of_image(image_id: Any, id_map: np.ndarray, segments_info: Sequence[Mapping],
                       thing_ids: set[int], first_ann_id: int = 1) -> list[dict]:
    """COCO instance annotations of one image's thing segments (``id_map`` int ``[H, W]``).

    ``area`` and ``bbox`` are the segment's JSON values (as panopticapi's detection conversion
    keeps them); a segment without them (the dataset reads such JSONs: its targets come from the
    PNG) gets what the format defines them as, its pixel count and tight box in the id map.
    """
    anns = []
    measured: dict[int, tuple[int, list[int]]] | None = None  # of the id map, computed once if needed
    for seg in segments_info:
        if int(seg["category_id"]) not in thing_ids:
            continue
        if measured is None and ("area" not in seg or "bbox" not in seg):
            measured = segment_areas_boxes(id_map)
        area, bbox = (measured or {}).get(int(seg["id"]), (0, [0, 0, 0, 0]))
        anns.append({
            "id": first_ann_id + len(anns),
            "image_id": image_id,
            "category_id": int(seg["category_id"]),
            "iscrowd": int(seg.get("iscrowd", 0)),
            "area": float(seg.get("area", area)),
            "bbox": [float(v) for v in seg.get("bbox", bbox)],
            "segmentation": _encode(id_map == seg["id"]),
        })
    return anns


def instances_from_panoptic(gt_json: str | os.PathLike | Mapping,
                            gt_folder: str | os.PathLike | None = None) -> dict:
    """A COCO instances dataset (dict) from COCO-panoptic ground truth files.

    Args:
        gt_json: path to (or contents of) a COCO-panoptic JSON with ``images``,
            ``annotations`` and ``categories``.
        gt_folder: its PNG folder; default = the JSON path without ``.json``.
    """
    if not isinstance(gt_json, Mapping):
        path = os.fspath(gt_json)
        gt_folder = gt_folder if gt_folder is not None else path.rsplit(".json", 1)[0]
        gt_json = load_json(path, what="ground-truth JSON", expect=dict)
    if gt_folder is None:
        raise ValueError("gt_folder is needed when gt_json is given as a dict")
    things = _thing_categories(gt_json["categories"])
    thing_ids = {c["id"] for c in things}
    anns: list[dict] = []
    for ann in gt_json["annotations"]:
        png = os.path.join(os.fspath(gt_folder), ann["file_name"])
        id_map = read_id_png(png)
        anns += instances_of_image(ann["image_id"], id_map, ann["segments_info"], thing_ids,
                                   len(anns) + 1)
    images = [{"id": im["id"], "height": im["height"], "width": im["width"],
               "file_name": im.get("file_name", "")} for im in gt_json["images"]]
    return {"images": images, "annotations": anns, "categories": things}


def detections_of_image(image_id: Any, boxes: np.ndarray, scores: np.ndarray,
                        category_ids: np.ndarray, masks: np.ndarray | Sequence | None = None) -> list[dict]:
    """COCO result entries of one image.

    Args:
        boxes: ``[K, 4]`` float XYXY pixels. scores: ``[K]``. category_ids: ``[K]`` dataset ids.
        masks: optional ``[K, H, W]`` bool, or a sequence of ``K`` bool ``[H, W]`` (tensors too).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = []
    for k in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[k].tolist()
        det = {"image_id": image_id, "category_id": int(category_ids[k]),
               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[k])}
        if masks is not None:
            mask = masks[k]
            det["segmentation"] = _encode(mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask))
        out.append(det)
    return out


def _no_results(gt: COCO) -> COCO:
    """An empty result set (``loadRes`` cannot load one): COCOeval then scores 0 where there is
    ground truth and -1 where there is none, e.g. in a size range without objects."""
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def coco_ap(gt_instances: Mapping, detections: Sequence[Mapping],
            iou_types: Sequence[str] = ("bbox", "segm")) -> dict:
    """Run COCOeval. Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}}``
    (fractions, ``per_class``: :func:`per_category_ap`;
    -1 where COCOeval has nothing to average, e.g. no ground truth of that size). No detections
    score 0 where there is ground truth (Detectron2 reports nan for every metric then)."""
    gt = COCO()
    gt.dataset = {k: list(v) for k, v in gt_instances.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results: dict[str, dict] = {}
    for iou_type in iou_types:
        dets = [d for d in detections if iou_type == "bbox" or "segmentation" in d]
        # loadRes takes a detection's area (which decides its size range) from its box when it
        # has one; mask AP must use the mask's area, box AP the box's.
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        dets = [{k: v for k, v in d.items() if k != drop} for d in dets]
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(dets) if dets else _no_results(gt)
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        results[iou_type] = {m: float(v) for m, v in zip(METRICS, ev.stats[:6])}
        results[iou_type]["per_class"] = per_category_ap(ev)
    return results


def per_category_ap(ev: COCOeval) -> dict[int, float | None]:
    """AP of each category (IoU 0.50:0.95, all areas, 100 detections), None for one without
    ground truth: Detectron2's ``AP-<name>`` (nan there), as a fraction."""
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    out: dict[int, float | None] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cat_id)] = float(p.mean()) if p.size else None
    return out


class COCOAPEvaluator:
    """Collects ground truth and detections in memory; AP on :meth:`compute` (gathered on ranks).

    Args:
        categories: COCO-panoptic category dicts (``id``, ``isthing``); things are scored.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        self.categories = _thing_categories(categories)
        self.thing_ids = {c["id"] for c in self.categories}
        self.reset()

    def reset(self) -> None:
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.dets: list[dict] = []
        self.with_masks = False  # masks were given (even none): mask AP is scored

    def add_ground_truth(self, image_id: Any, gt_id_map: torch.Tensor | np.ndarray,
                         segments_info: Sequence[Mapping]) -> None:
        """Panoptic ground truth of one image: id map int ``[H, W]`` and its segments_info."""
        if isinstance(gt_id_map, torch.Tensor):
            gt_id_map = gt_id_map.cpu().numpy()
        h, w = gt_id_map.shape
        self.images.append({"id": image_id, "height": int(h), "width": int(w)})
        self.gt += instances_of_image(image_id, gt_id_map, segments_info, self.thing_ids)

    def update(self, image_id: Any, boxes: torch.Tensor | np.ndarray,
               scores: torch.Tensor | np.ndarray, category_ids: torch.Tensor | np.ndarray,
               masks: torch.Tensor | np.ndarray | Sequence | None = None) -> None:
        """Detections of one image: boxes ``[K, 4]`` XYXY, scores ``[K]``, dataset category ids
        ``[K]``, optional masks: bool ``[K, H, W]``, or any sequence of ``K`` bool ``[H, W]`` masks
        (e.g. made one at a time, so that a large image never holds all ``K`` at full size)."""
        def host(x):
            return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        self.with_masks = self.with_masks or masks is not None
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = host(masks)
        self.dets += detections_of_image(image_id, host(boxes), host(scores), host(category_ids), masks)

    def compute(self) -> dict:
        images, gt, dets, with_masks = self.images, self.gt, self.dets, self.with_masks
        if is_multiprocess():
            parts = all_gather_objects((images, gt, dets, with_masks))
            images = [x for p in parts for x in p[0]]
            gt = [x for p in parts for x in p[1]]
            dets = [x for p in parts for x in p[2]]
            with_masks = any(p[3] for p in parts)
        gt = [dict(a, id=i + 1) for i, a in enumerate(gt)]  # unique ids across images and ranks
        iou_types = ("bbox", "segm") if with_masks or any("segmentation" in d for d in dets) else ("bbox",)
        return coco_ap({"images": images, "annotations": gt, "categories": self.categories},
                       dets, iou_types)
