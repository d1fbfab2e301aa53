"""The built-in evaluators: PQ, mIoU, COCO AP, the prediction writers, overlays and the report.

Each wraps the class that does the work (:class:`~panfpn.evaluation.accumulator.PQAccumulator`,
:class:`~panfpn.evaluation.semantic.SemSegEvaluator`, :class:`~panfpn.evaluation.coco_ap.COCOAPEvaluator`,
the writers of :mod:`panfpn.evaluation.writer`, :class:`~panfpn.evaluation.worst_images.WorstImages`)
in the protocol of :mod:`panfpn.evaluation.evaluator`; which of them run is decided by
:func:`panfpn.evaluation.build.build_evaluators`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.accumulator import PQAccumulator
from panfpn.evaluation.coco_ap import COCOAPEvaluator
from panfpn.evaluation.evaluator import EvalImage, Evaluator
from panfpn.evaluation.rank_images import first_over_ranks
from panfpn.evaluation.report_collector import ReportCollector
from panfpn.evaluation.semantic import SemSegEvaluator
from panfpn.utils.atomic import save_image_atomic

__all__ = ["COCOAP", "MasksOneByOne", "Overlays", "PanopticPNGWriter", "PanopticQuality",
           "ReportCollector", "SemanticPNGWriter", "SemanticSegmentation"]


class PanopticQuality(Evaluator):
    """``{"panoptic": pq_compute-style dict}``: PQ / SQ / RQ, All / Things / Stuff and per class."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        self.pq = PQAccumulator(metadata.to_coco_categories())

    def reset(self) -> None:
        self.pq.reset()

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self.pq.update(img.pred_map, img.pred_segments, img.gt_map, img.gt_segments,
                           image_id=img.image_id, pairs=img.pairs)

    def evaluate(self) -> dict[str, Any]:
        return {"panoptic": self.pq.compute()}


class SemanticSegmentation(Evaluator):
    """``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU", "ACC"}}`` of the semantic argmax."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        self.sem = SemSegEvaluator(metadata.num_sem_classes)

    def reset(self) -> None:
        self.sem.reset()

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self.sem.add(img.sem_confusion)

    def evaluate(self) -> dict[str, Any]:
        return {"sem_seg": self.sem.compute()}


class COCOAP(Evaluator):
    """``{"bbox": {...}, "segm": {...}}``: COCO AP of the instances, ground truth from the panoptic
    ground truth; masks kept inside their boxes are made full size one at a time."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        self.ap = COCOAPEvaluator(metadata.to_coco_categories())
        self.thing_ids = torch.as_tensor(metadata.thing_ids)

    def reset(self) -> None:
        self.ap.reset()

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            instances = img.output["instances"]
            self.ap.add_ground_truth(img.image_id, img.gt_map, img.gt_segments)
            masks = instances["masks"]
            if not isinstance(masks, torch.Tensor) and hasattr(masks, "mask"):  # BoxMasks: full size one
                masks = MasksOneByOne(masks)  # at a time, K x H x W bytes never exist at once
            labels = instances["labels"]
            self.ap.update(img.image_id, instances["boxes"], instances["scores"],
                           self.thing_ids.to(labels.device)[labels], masks)

    def evaluate(self) -> dict[str, Any]:
        return self.ap.compute()


class MasksOneByOne(Sequence):
    """Masks kept inside their boxes (``panfpn.modeling.merge.BoxMasks``: ``len`` and ``.mask(k)``)
    as a sequence of full-size bool ``[H, W]`` masks, each made when it is read (COCO AP encodes
    them one by one)."""

    def __init__(self, masks: Any) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, k: int) -> torch.Tensor:
        if not 0 <= k < len(self.masks):
            raise IndexError(k)
        return self.masks.mask(k)


class PanopticPNGWriter(Evaluator):
    """COCO-panoptic PNG per image (written as it comes) and the JSON (gathered from every rank on
    :meth:`evaluate`) in ``out_dir``: ``panoptic_pred.json`` + ``panoptic_pred/``; no results."""

    def __init__(self, metadata: DatasetMetadata, out_dir: str | Path) -> None:
        self.metadata, self.out_dir = metadata, Path(out_dir)
        self.reset()

    def reset(self) -> None:
        from panfpn.evaluation.writer import PanopticPredictionWriter

        self.writer = PanopticPredictionWriter(self.out_dir, self.metadata)

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self.writer.add(img.image_id, img.file_name, img.pred_map, img.pred_segments)

    def evaluate(self) -> dict[str, Any]:
        self.writer.write_json()
        return {}


class SemanticPNGWriter(Evaluator):
    """One PNG of dataset category ids per image in ``out_dir`` (see
    :class:`panfpn.evaluation.writer.SemanticPredictionWriter`); no results."""

    def __init__(self, metadata: DatasetMetadata, out_dir: str | Path) -> None:
        self.metadata, self.out_dir = metadata, Path(out_dir)
        self.reset()

    def reset(self) -> None:
        from panfpn.evaluation.writer import SemanticPredictionWriter

        self.writer = SemanticPredictionWriter(self.out_dir, self.metadata)

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self.writer.add(img.image_id, img.output["sem_seg"])

    def evaluate(self) -> dict[str, Any]:
        return {}


class Overlays(Evaluator):
    """``{"overlays": [uint8 HxWx3]}``: ground truth | prediction of the first ``n`` images, over all
    ranks (TensorBoard in training); with ``out_dir``, :meth:`finish` saves them there as
    ``0000.png``, ``0001.png``, ..."""

    def __init__(self, n: int, out_dir: str | Path | None = None) -> None:
        self.n, self.out_dir = int(n), out_dir
        self.reset()

    def reset(self) -> None:
        self.overlays: list[np.ndarray] = []

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            if len(self.overlays) < self.n:
                self.overlays.append(img.overlay())

    def evaluate(self) -> dict[str, Any]:
        self.overlays = first_over_ranks(self.overlays, self.n)  # every rank's first, in dataset order
        return {"overlays": list(self.overlays)}

    def finish(self, results: Mapping[str, Any]) -> None:
        if self.out_dir is not None:
            for i, overlay in enumerate(self.overlays):
                save_image_atomic(Path(self.out_dir) / f"{i:04d}.png", overlay)
