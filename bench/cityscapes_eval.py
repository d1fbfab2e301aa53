"""Per-image cost of the Cityscapes evaluators (``cityscapes_ap``, ``cityscapes_sem_seg``) at
Cityscapes' size, against the COCO AP work on the same masks measured in the same run.

A 1024x2048 panoptic ground truth with ``--gt`` car instances, ``--pred`` predicted instance masks
(full-size, as Mask2Former gives them, and kept inside their boxes, as Panoptic FPN gives them),
a 19-class semantic prediction. The reference: encoding the same full-size masks as COCO RLEs,
which ``segm`` AP does for every image. Median of ``--rounds``.

    python bench/cityscapes_eval.py [--gt 40] [--pred 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata  # noqa: E402
from panfpn.evaluation.cityscapes_ap import cityscapes_classes, image_classes  # noqa: E402
from panfpn.evaluation.cityscapes_pixel import CityscapesPixelScores  # noqa: E402
from panfpn.modeling.box_masks import BoxMasks  # noqa: E402

H, W = 1024, 2048


def scene(n_gt: int, n_pred: int, rng: np.random.Generator):
    """Ground truth (id map, segments, semantic map) and predictions (full masks, box masks, labels, scores)."""
    gt = torch.full((H, W), 7000, dtype=torch.int64)  # road everywhere (stuff: label id 7)
    sem_gt = torch.zeros(H, W, dtype=torch.int64)
    segments = [{"id": 7000, "category_id": 7, "iscrowd": 0}]
    for k in range(n_gt):
        y, x, h, w = rng.integers(0, H - 150), rng.integers(0, W - 300), rng.integers(20, 150), rng.integers(20, 300)
        gt[y:y + h, x:x + w] = 26000 + k
        sem_gt[y:y + h, x:x + w] = 13
        segments.append({"id": 26000 + k, "category_id": 26, "iscrowd": 0})
    full = torch.zeros(n_pred, H, W, dtype=torch.bool)
    crops, origins = [], []
    for k in range(n_pred):
        y, x, h, w = rng.integers(0, H - 160), rng.integers(0, W - 320), rng.integers(20, 160), rng.integers(20, 320)
        full[k, y:y + h, x:x + w] = True
        crops.append(full[k, y:y + h, x:x + w].clone())
        origins.append((int(y), int(x)))
    boxed = BoxMasks(tuple(crops), tuple(origins), (H, W))
    sem_pred = torch.from_numpy(rng.integers(0, 19, (H, W)))
    return gt, segments, sem_gt, full, boxed, [26] * n_pred, rng.random(n_pred).tolist(), sem_pred


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gt", type=int, default=40)
    ap.add_argument("--pred", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    metadata = cityscapes_panoptic_metadata(use_train_id=False)
    classes = cityscapes_classes(metadata)
    pixel = CityscapesPixelScores(metadata)
    gt, segments, sem_gt, full, boxed, labels, scores, sem_pred = scene(args.gt, args.pred, np.random.default_rng(0))
    contenders = {
        "COCO RLE encoding, full masks (ref)": lambda: [mask_util.encode(np.asfortranarray(m.numpy().view(np.uint8)))
                                                        for m in full],
        "cityscapes_ap, full masks": lambda: image_classes(gt, segments, labels, scores, full, classes),
        "cityscapes_ap, box masks": lambda: image_classes(gt, segments, labels, scores, boxed, classes),
        "cityscapes_sem_seg": lambda: pixel.update(sem_pred, sem_gt, gt, segments),
    }
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    ref = statistics.median(times["COCO RLE encoding, full masks (ref)"])
    print(f"{H}x{W}, {args.gt} ground-truth instances, {args.pred} predictions, median of {args.rounds} rounds:")
    for name, t in times.items():
        print(f"  {name:38s} {statistics.median(t) * 1e3:8.1f} ms   {statistics.median(t) / ref:5.2f}x the reference")


if __name__ == "__main__":
    main()
