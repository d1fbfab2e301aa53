"""A stand-in model for evaluator tests: the ground truth, shifted, with segments dropped and
categories swapped (so PQ, mIoU and AP are neither 0 nor 1), as the eval loop's model outputs."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from panfpn.data.metadata import DatasetMetadata


def _rng(image_id) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(str(image_id).encode()))


class NoisyGroundTruthModel(torch.nn.Module):
    """``model(batch)`` -> one output dict per image (docs/interfaces.md section 3), made from the
    batch's ground truth: rolled by up to 3 pixels, 20 % of the segments dropped, 15 % given
    another category of the same kind, random thing scores."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        super().__init__()
        self.metadata = metadata

    def forward(self, batch: dict) -> list[dict]:
        return [self.one(batch["image_ids"][i], batch["gt_panoptic"][i], batch["segments_info"][i])
                for i in range(len(batch["image_ids"]))]

    def one(self, image_id, gt: torch.Tensor, segments: list[dict]) -> dict:
        rng, meta = _rng(image_id), self.metadata
        pred = torch.roll(gt.clone(), shifts=(int(rng.integers(0, 4)), int(rng.integers(0, 4))), dims=(0, 1))
        out_segments, sem = [], torch.zeros_like(gt, dtype=torch.int64)
        boxes, scores, labels, masks = [], [], [], []
        for seg in segments:
            mask = pred == seg["id"]
            if rng.random() < 0.2 or not bool(mask.any()):
                pred[mask] = 0
                continue
            cat = meta.category(int(seg["category_id"]))
            same_kind = [c.id for c in meta.categories if c.isthing == cat.isthing]
            cat_id = int(rng.choice(same_kind)) if rng.random() < 0.15 else cat.id
            label = meta.thing_label(cat_id) if cat.isthing else meta.sem_label(cat_id)
            score = float(rng.uniform(0.3, 1.0)) if cat.isthing else None
            out_segments.append({"id": int(seg["id"]), "isthing": bool(cat.isthing), "category": label,
                                 "score": score, "area": int(mask.sum())})
            sem[mask] = meta.sem_label(cat_id)
            if cat.isthing:
                ys, xs = torch.nonzero(mask, as_tuple=True)
                boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
                scores.append(score)
                labels.append(label)
                masks.append(mask)
        h, w = gt.shape
        instances = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                     "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64),
                     "masks": torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)}
        return {"panoptic": (pred.to(torch.int32), out_segments), "sem_seg": sem, "instances": instances}
