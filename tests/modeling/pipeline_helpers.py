"""Helpers for the whole-pipeline export tests: a tiny trained model, its images, eager results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import ImageFileDataset
from panfpn.data.synthetic import generate_dataset, synthetic_metadata
from panfpn.evaluation.label_mapping import model_segments_to_dataset
from panfpn.modeling.build import build_model
from panfpn.modeling.merge import MergeThresholds

from modeling_helpers import compose_model_config, make_batch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
COCO_IMAGES = sorted((ASSETS / "coco_panoptic_sample" / "input_images").glob("*.jpg"))
COCO_CATEGORIES = ASSETS / "coco_panoptic_sample" / "panoptic_coco_categories.json"  # as COCO publishes it
# The box head keeps every detection so that a barely trained model still has things to merge.
OVERRIDES = ("model.roi_heads.box_head.test.score_thresh=0.0",
             "model.roi_heads.box_head.test.detections_per_image=12")
# Both rule sets, with the score threshold lowered (the tiny model's scores are ~0.05) and the stuff
# area scaled to 128-pixel images; the rules that differ (overlap ratio vs remaining area) are kept.
RULES = {
    "detectron2": dataclasses.replace(MergeThresholds.detectron2(), score_thresh=0.04, stuff_area=64),
    "textbook": dataclasses.replace(MergeThresholds.textbook(), score_thresh=0.04),
}


def tiny_trained_model(steps: int = 3):
    """The small synthetic model after a few SGD steps on random batches (seeded), in eval mode,
    with its config, metadata and test transform."""
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    d = cfg.data
    for step in range(steps):
        batch = make_batch([(96, 128), (128, 96)], [(96, 128), (128, 96)], num_things=d.num_thing_classes,
                           num_sem=d.num_sem_classes, seed=step)
        loss = sum(model.train()(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cfg, synthetic_metadata(), instantiate(cfg.data.val.transforms)


def coco_label_space_model():
    """The small model with COCO panoptic's label space (80 things, 53 stuff + 'thing': 54 semantic
    labels) and a 128/224 test resize, randomly initialised (seeded), in eval mode, with its
    metadata and test transform. The class, mask and semantic predictors are re-drawn with a wider
    spread so that scores (~0.35-0.45), labels and masks are varied rather than near-uniform ties."""
    cfg = compose_model_config("panoptic_fpn_small", "coco_panoptic", (
        *OVERRIDES, "data.val.transforms.short_edge_lengths=[128]", "data.val.transforms.max_size=224"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_head.cls_score.weight.normal_(0.0, 0.1)
        model.roi_heads.mask_head.predictor.weight.normal_(0.0, 0.3)
        model.semantic_head.predictor.weight.normal_(0.0, 0.3)
    return model, instantiate(cfg.data.metadata), instantiate(cfg.data.val.transforms)


def sample_images(tmp: Path) -> list[Path]:
    """Two synthetic val-style images (128x128: the test resize is the identity) and the two COCO
    sample photos (resized to 128 x ~171 by the test transform, then outputs at their own size)."""
    root = generate_dataset(tmp / "synthetic", num_images=2, seed=1)
    return sorted((root / "images").glob("*.jpg")) + COCO_IMAGES


def edge_images(tmp: Path) -> list[Path]:
    """Two crops of the first COCO photo (PNG) at the edges of the .pt2's range: a 24x640 strip
    (the test resize makes it 12x320: P5 is one cell high, which a guard refused once) and a 6x9
    corner (below the 16 px the .pt2 accepted before)."""
    from PIL import Image

    photo = Image.open(COCO_IMAGES[0]).convert("RGB")
    paths = [tmp / "strip.png", tmp / "corner.png"]
    photo.crop((0, 200, 640, 224)).save(paths[0])
    photo.crop((300, 200, 309, 206)).save(paths[1])
    return paths


@torch.no_grad()
def eager_results(model, transform, paths, rules: MergeThresholds, metadata, *, with_instances: bool = False):
    """Per image, ``model.eval()``'s id map and segments (dataset category ids), under ``rules``;
    with ``with_instances`` also per image boxes, scores, labels (dataset ids) and semantic labels."""
    saved = model.merge_thresholds
    model.merge_thresholds = rules
    try:
        out, extras = [], []
        for sample in ImageFileDataset(paths, transforms=transform, keep_original=False):
            result = model(collate_panoptic([sample]))[0]
            id_map, segs = result["panoptic"]
            out.append((id_map.numpy(), [{**s, "area": seg["area"]} for s, seg in
                                         zip(model_segments_to_dataset(segs, metadata), segs)]))
            inst = result["instances"]
            extras.append({"boxes": inst["boxes"].numpy(), "scores": inst["scores"].numpy(),
                           "labels": np.array([metadata.thing_ids[i] for i in inst["labels"].tolist()],
                                              dtype=np.int64), "sem_seg": result["sem_seg"].numpy()})
        return (out, extras) if with_instances else out
    finally:
        model.merge_thresholds = saved


def exported_segments(outputs: dict[str, np.ndarray]) -> list[dict]:
    """The valid rows of an exported graph's segment arrays, in the eager form."""
    rows = []
    for k in range(int(outputs["num_segments"])):
        isthing = bool(outputs["segments_isthing"][k])
        seg = {"id": int(outputs["segments_id"][k]), "category_id": int(outputs["segments_category_id"][k]),
               "isthing": int(isthing), "area": int(outputs["segments_area"][k])}
        if isthing:
            seg["score"] = float(outputs["segments_score"][k])
        rows.append(seg)
    return rows


def pq_against(want: list[tuple[np.ndarray, list[dict]]], got: list[tuple[np.ndarray, list[dict]]],
               metadata, tmp: Path) -> float:
    """PQ (in %) of ``got`` with ``want`` as the ground truth, both written as COCO-panoptic files
    and scored by ``panfpn.evaluation.pq`` (one process)."""
    from panfpn.evaluation.pq import pq_compute
    from panfpn.evaluation.writer import PanopticPredictionWriter

    jsons = []
    for name, results in (("want", want), ("got", got)):
        writer = PanopticPredictionWriter(tmp, metadata, name=name)
        for image_id, (id_map, segs) in enumerate(results):
            writer.add(image_id, f"{image_id}.jpg", id_map, segs)
        jsons.append(writer.write_json())
    return 100.0 * pq_compute(jsons[0], jsons[1], workers=1)["All"]["pq"]
