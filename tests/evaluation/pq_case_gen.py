"""Random COCO-panoptic ground truth + prediction pairs that hit every corner of the PQ rules.

Small images (a few hundred pixels) make exact ties frequent: IoU exactly 0.5, predictions
exactly half on void or crowd. The generator also places crowd regions (sometimes two of one
category in an image), void, missing and extra segments, category swaps, categories that occur
only in predictions, and varies the image size from image to image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Non-contiguous ids, COCO style; 90 (thing) and 150 (stuff) only ever appear in predictions.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 7, "name": "train", "isthing": 1, "color": [0, 80, 100]},
    {"id": 90, "name": "toothbrush", "isthing": 1, "color": [1, 2, 3]},
    {"id": 101, "name": "grass", "isthing": 0, "color": [0, 200, 0]},
    {"id": 120, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 150, "name": "wall", "isthing": 0, "color": [102, 102, 156]},
]
GT_CATS = [1, 3, 7, 101, 120]
THINGS = {c["id"] for c in CATEGORIES if c["isthing"]}


def _rect(rng: np.random.Generator, h: int, w: int) -> tuple[slice, slice]:
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
    return slice(y0, y1), slice(x0, x1)


def _new_id(rng: np.random.Generator, used: set[int]) -> int:
    while True:
        # Mix tiny ids and ids that use all three colour channels.
        i = int(rng.integers(1, 40)) if rng.random() < 0.3 else int(rng.integers(1, 1 << 24))
        if i not in used:
            used.add(i)
            return i


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, list[dict], np.ndarray, list[dict]]:
    """One image: (gt id map [H, W], gt segments, pred id map [H, W], pred segments)."""
    h, w = int(rng.integers(4, 28)), int(rng.integers(4, 36))
    gt = np.zeros((h, w), np.int64)
    used: set[int] = set()
    gt_cat: dict[int, int] = {}
    for _ in range(int(rng.integers(1, 9))):
        seg_id = _new_id(rng, used)
        gt[_rect(rng, h, w)] = seg_id
        gt_cat[seg_id] = int(rng.choice(GT_CATS))
    for _ in range(int(rng.integers(0, 3))):
        gt[_rect(rng, h, w)] = 0  # void
    gt_segments = []
    for seg_id in np.unique(gt).tolist():
        if seg_id == 0:
            continue
        cat = gt_cat[seg_id]
        crowd = int(cat in THINGS and rng.random() < 0.25)
        gt_segments.append({"id": seg_id, "category_id": cat, "iscrowd": crowd,
                            "area": int((gt == seg_id).sum()), "bbox": [0, 0, 1, 1]})
    rng.shuffle(gt_segments)  # listing order matters for the crowd rule

    pred = np.zeros_like(gt)
    pred_cat: dict[int, int] = {}
    pused: set[int] = set()
    for seg in gt_segments:
        r = rng.random()
        mask = gt == seg["id"]
        if r < 0.15:
            continue  # missing prediction
        if r < 0.45:
            mask = np.roll(mask, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1))
        elif r < 0.55:  # keep about half of it: ties at IoU 0.5
            ys, xs = np.nonzero(mask)
            keep = rng.random(ys.shape[0]) < 0.5
            mask = np.zeros_like(mask)
            mask[ys[keep], xs[keep]] = True
        cat = seg["category_id"]
        if rng.random() < 0.1:
            cat = int(rng.choice([c["id"] for c in CATEGORIES]))
        pid = _new_id(rng, pused)
        pred[mask] = pid
        pred_cat[pid] = cat
    for _ in range(int(rng.integers(0, 4))):  # extra segments, anywhere (also on void/crowd)
        pid = _new_id(rng, pused)
        pred[_rect(rng, h, w)] = pid
        pred_cat[pid] = int(rng.choice([c["id"] for c in CATEGORIES]))
    if rng.random() < 0.3:
        pred[_rect(rng, h, w)] = 0
    pred_segments = [{"id": pid, "category_id": pred_cat[pid]}
                     for pid in np.unique(pred).tolist() if pid != 0]
    rng.shuffle(pred_segments)
    return gt, gt_segments, pred, pred_segments


def to_rgb(id_map: np.ndarray) -> np.ndarray:
    ids = id_map.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


def write_panoptic(folder: Path, name: str, images: list[tuple[object, np.ndarray, list[dict]]],
                   categories: list[dict] = CATEGORIES) -> Path:
    """Write ``name.json`` and PNGs in ``name/``; images = [(image_id, id map, segments)]."""
    png_dir = folder / name
    png_dir.mkdir(parents=True, exist_ok=True)
    anns, imgs = [], []
    for image_id, id_map, segments in images:
        file_name = f"{image_id}.png"
        Image.fromarray(to_rgb(id_map)).save(png_dir / file_name)
        anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
        imgs.append({"id": image_id, "file_name": f"{image_id}.jpg",
                     "height": int(id_map.shape[0]), "width": int(id_map.shape[1])})
    path = folder / f"{name}.json"
    with open(path, "w") as f:
        json.dump({"images": imgs, "annotations": anns, "categories": categories}, f)
    return path


def write_cases(folder: Path, seed: int, n: int) -> tuple[Path, Path, list]:
    """Write ``n`` random cases; returns (gt json, pred json, the cases)."""
    rng = np.random.default_rng(seed)
    cases = [make_case(rng) for _ in range(n)]
    gt_json = write_panoptic(folder, "gt", [(i, g, gs) for i, (g, gs, _, _) in enumerate(cases)])
    pred_json = write_panoptic(folder, "pred",
                               [(i, p, ps) for i, (_, _, p, ps) in enumerate(cases)])
    return gt_json, pred_json, cases


def assert_same(ours: dict, ref: dict) -> None:
    """Same counts per class and scores within 1e-12 (ref: a result dict of ours or hotcoco's)."""
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"], split
        for m in ("pq", "sq", "rq"):
            assert abs(ours[split][m] - ref[split][m]) <= 1e-12, (split, m)
    for cat, mine in ours["per_class"].items():
        theirs = ref["per_class"][cat]
        counts = ("tp", "fp", "fn")
        assert [mine[k] for k in counts] == [theirs[k] for k in counts], cat
        if mine["tp"] + mine["fp"] + mine["fn"]:
            for m in ("pq", "sq", "rq"):
                assert abs(mine[m] - theirs[m]) <= 1e-12, (cat, m)
