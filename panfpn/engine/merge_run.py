"""tools/merge.py: saved semantic predictions (label PNGs in dataset ids) + instance predictions (a
COCO results JSON with RLE masks) -> COCO-panoptic PNGs + JSON, merged by
:func:`panfpn.modeling.merge_predictions.merge_predictions`; optionally scored with our PQ.

An image whose inputs are missing or bad (no semantic PNG, wrong size, a polygon or misfit RLE, an
unknown category) is reported and skipped, never merged; the list goes to ``merge_skipped.json``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from panfpn.data.metadata import DatasetMetadata
from panfpn.engine.config import ConfigError, section_values
from panfpn.evaluation.writer import PanopticPredictionWriter
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.merge_predictions import merge_predictions
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.dist import resolve_device
from panfpn.utils.json_file import JSONFileError, load_json

log = logging.getLogger(__name__)

PANOPTIC_NAME = "panoptic_merged"
SKIPPED_FILE = "merge_skipped.json"


class BadInput(ValueError):
    """One image's inputs cannot be merged (the message says which file and why)."""


def merge_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Run the merge job of a composed config (section ``merge``, key ``device``)."""
    opts = section_values(cfg, "merge")
    for key in ("semantic_dir", "instances_json"):
        if opts[key] is None:
            raise ConfigError(f"config key 'merge.{key}' is required by tools/merge.py")
    images_json = opts["images_json"] or opts["eval_gt_json"]
    if images_json is None:
        raise ConfigError("config key 'merge.images_json' (or merge.eval_gt_json) must name a "
                          "COCO-panoptic JSON with the images and categories")
    out_dir = Path(opts["output_dir"] or cfg.output_dir)
    rules = MergeThresholds.textbook() if opts["rules"] == "textbook" else MergeThresholds.detectron2()
    summary = merge_files(Path(opts["semantic_dir"]), Path(opts["instances_json"]), Path(images_json),
                          out_dir, rules=rules, device=resolve_device(cfg.device))
    if opts["eval_gt_json"] is not None:
        from panfpn.evaluation.pq import pq_compute

        summary["pq"] = pq_compute(opts["eval_gt_json"], summary["json"], workers=1)
        log.info("PQ %.2f SQ %.2f RQ %.2f", *(100 * summary["pq"]["All"][k] for k in ("pq", "sq", "rq")))
    return summary


def _load_json(path: Path, what: str) -> Any:
    try:
        return load_json(path, what=what)
    except JSONFileError as err:
        raise ConfigError(str(err)) from err


def merge_files(semantic_dir: Path, instances_json: Path, images_json: Path, out_dir: Path, *,
                rules: MergeThresholds, device: torch.device) -> dict[str, Any]:
    """Merge every image of ``images_json``; returns ``{"json", "merged", "skipped"}``."""
    images_data = _load_json(images_json, "merge.images_json")
    if not isinstance(images_data, dict) or "images" not in images_data or "categories" not in images_data:
        raise ConfigError(f"merge.images_json {images_json}: needs 'images' and 'categories' "
                          "(a COCO-panoptic JSON)")
    metadata = DatasetMetadata.from_coco_categories(images_data["categories"], name=str(images_json))
    results = _load_json(instances_json, "merge.instances_json")
    if not isinstance(results, list):
        raise ConfigError(f"merge.instances_json {instances_json}: must be a list of COCO results, "
                          f"got {type(results).__name__}")
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r.get("image_id")].append(r)
    skipped: dict[str, str] = {}
    known = {img["id"] for img in images_data["images"]}
    for image_id in sorted(set(by_image) - known, key=str):
        skipped[str(image_id)] = f"{instances_json}: results for image {image_id!r} not in {images_json}"
    writer = PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME)
    merged = 0
    for image in tqdm(images_data["images"], desc="merge", unit="img"):
        try:
            _merge_one(image, by_image.get(image["id"], []), semantic_dir, metadata, rules, device, writer)
            merged += 1
        except BadInput as err:
            skipped[str(image["id"])] = str(err)
            log.warning("skipped image %r: %s", image["id"], err)
    json_path = writer.write_json()
    write_json_atomic(out_dir / SKIPPED_FILE, skipped)
    log.info("merged %d images into %s; skipped %d (%s)", merged, json_path, len(skipped),
             out_dir / SKIPPED_FILE)
    return {"json": str(json_path), "merged": merged, "skipped": skipped}


def _merge_one(image: dict, results: list[dict], semantic_dir: Path, metadata: DatasetMetadata,
               rules: MergeThresholds, device: torch.device, writer: PanopticPredictionWriter) -> None:
    """Read, check, merge and write one image; BadInput names the file and the problem."""
    size = (int(image["height"]), int(image["width"]))
    sem = _read_semantic(semantic_dir / (Path(image["file_name"]).stem + ".png"), size)
    masks = torch.from_numpy(_decode_masks(results, size, image["id"])).to(device)
    scores = torch.tensor([float(r.get("score", float("nan"))) for r in results], dtype=torch.float64)
    if torch.isnan(scores).any():
        raise BadInput(f"image {image['id']!r}: an instance result has no numeric score")
    labels = torch.tensor([r.get("category_id", -1) for r in results], dtype=torch.long)
    try:
        id_map, segments = merge_predictions(torch.from_numpy(sem).to(device), masks,
                                             scores.to(device), labels.to(device),
                                             metadata=metadata, rules=rules)
    except ValueError as err:
        raise BadInput(f"image {image['id']!r}: {err}") from err
    writer.add(image["id"], image["file_name"], id_map.cpu().numpy(),
               [{"id": s["id"], "category_id": s["category_id"], "isthing": int(s["isthing"]),
                 **({"score": s["score"]} if s["score"] is not None else {})} for s in segments])


def _read_semantic(path: Path, size: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise BadInput(f"semantic PNG {path} is missing")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadInput(f"semantic PNG {path}: mode {img.mode} is not a single-channel label map")
            sem = np.asarray(img).astype(np.int64)
    except OSError as err:
        raise BadInput(f"semantic PNG {path}: cannot be read: {err}") from err
    if sem.shape != size:
        raise BadInput(f"semantic PNG {path} is {sem.shape[0]}x{sem.shape[1]}, the image is "
                       f"{size[0]}x{size[1]}")
    return sem


def _decode_masks(results: list[dict], size: tuple[int, int], image_id: Any) -> np.ndarray:
    """bool ``[N, H, W]`` from the results' RLE segmentations (compressed or not)."""
    masks = np.zeros((len(results), *size), dtype=bool)
    for k, r in enumerate(results):
        rle = r.get("segmentation")
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            raise BadInput(f"image {image_id!r}: result {k} has no RLE segmentation (polygons and "
                           "boxes are not masks)")
        if [int(v) for v in rle["size"]] != list(size):
            raise BadInput(f"image {image_id!r}: result {k} RLE size {rle['size']} is not the image's "
                           f"{list(size)}")
        try:
            if isinstance(rle["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, *size)
            elif isinstance(rle["counts"], str):
                rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            masks[k] = mask_utils.decode(rle).astype(bool)
        except (TypeError, ValueError, UnicodeError) as err:
            raise BadInput(f"image {image_id!r}: result {k} RLE cannot be decoded: {err}") from err
    return masks
