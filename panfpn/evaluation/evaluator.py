"""The evaluator protocol (reset / process / evaluate) and the per-image view every evaluator reads.

The eval loop (:func:`panfpn.engine.eval_loop.evaluate`) runs the model on a batch, wraps each
image's output with its ground truth in an :class:`EvalImage` and hands the batch and these views
to every :class:`Evaluator` of a list (:func:`panfpn.evaluation.build.build_evaluators`). The
conventions are Detectron2's ``DatasetEvaluator`` and torchmetrics' update/compute:

* ``reset()`` forgets every image seen;
* ``process(batch, outputs)`` adds one batch (on every rank, its own shard of the images);
* ``evaluate() -> dict`` returns the results, gathered over every rank: it is a collective call
  (each evaluator all-reduces or all-gathers its own state through :mod:`panfpn.utils.dist`),
  so every rank calls it, in the same order. Its keys are top-level keys of eval_results.json;
  two evaluators may not return the same key;
* ``finish(results)`` (optional) runs on the main process after eval_results.json is written,
  with every evaluator's results (the report page, files that show all metrics).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.targets import semantic_map
from panfpn.evaluation.accumulator import checked_pairs
from panfpn.evaluation.gt_positions import segment_positions
from panfpn.evaluation.label_mapping import model_segments_to_dataset
from panfpn.evaluation.semantic import confusion_counts
from panfpn.evaluation.visualize import panoptic_overlay, side_by_side


def gt_positions_of(gt_map: torch.Tensor, gt_segments: Sequence[Mapping]) -> np.ndarray:
    """int64 ``[H, W]`` on the host: each pixel of the panoptic ground truth ``gt_map`` (any device)
    as its position in ``gt_segments`` (``len(gt_segments)``: none); :attr:`EvalImage.gt_positions`,
    or an evaluator's own when it is given none."""
    return segment_positions(gt_map.cpu().numpy(), [int(s["id"]) for s in gt_segments])


class EvalImage:
    """One image of a batch as the evaluators read it: the model's output (``output``, the dict of
    docs/interfaces.md section 3), its panoptic prediction in dataset category ids and the image's
    ground truth at the same (original) resolution. What several evaluators need is computed once
    on first use: ``pairs`` (the (gt id, pred id, pixel count) pairs of the two id maps),
    ``sem_gt`` (the semantic ground truth), ``sem_confusion`` and ``gt_positions``."""

    def __init__(self, batch: Mapping[str, Any], index: int, output: Mapping[str, Any],
                 metadata: DatasetMetadata, device: torch.device | None = None) -> None:
        self.batch, self.index, self.output, self.metadata = batch, index, output, metadata
        self.image_id = batch["image_ids"][index]
        self.file_name = batch["file_names"][index]
        paths = batch.get("image_paths")  # where the image was read (eval datasets); None when not known
        self.image_path: str | None = paths[index] if paths is not None else None
        self.pred_map, segments = output["panoptic"]
        self.pred_segments = model_segments_to_dataset(segments, metadata)
        gt_map = batch["gt_panoptic"][index]
        self.gt_map = gt_map.to(device) if device is not None else gt_map
        self.gt_segments = batch["segments_info"][index]

    @cached_property
    def pairs(self) -> list[tuple[int, int, int]]:
        """(gt id, pred id, count) of every pixel, counted once (checked as the PQ checks them)."""
        return checked_pairs(self.pred_map, self.gt_map, self.image_id, self.gt_segments, self.pred_segments)

    @cached_property
    def sem_gt(self) -> torch.Tensor:
        """int64 ``[H, W]`` semantic labels of the ground truth (255 = ignore), on the gt map's device."""
        return semantic_map(self.gt_map, self.gt_segments, self.metadata).to(self.gt_map.device)

    @cached_property
    def sem_confusion(self) -> torch.Tensor:
        """int64 ``[C + 1, C + 1]`` (ground-truth label, predicted label) pixel counts of the semantic
        argmax (:func:`panfpn.evaluation.semantic.confusion_counts`), for every evaluator that
        scores it (``sem_seg``, ``cityscapes_sem_seg``): one pass over the pixels per image."""
        return confusion_counts(self.output["sem_seg"], self.sem_gt, self.metadata.num_sem_classes)

    @cached_property
    def gt_positions(self) -> np.ndarray:
        """int64 ``[H, W]`` on the host: each ground-truth pixel's position in ``gt_segments``
        (``len(gt_segments)``: none), for ``cityscapes_ap`` and ``cityscapes_sem_seg``: one pass
        over the pixels per image for both."""
        return gt_positions_of(self.gt_map, self.gt_segments)

    def overlay(self, max_width: int | None = None) -> np.ndarray:
        """uint8 ``[H, 2W + gap, 3]``: ground truth | prediction drawn over the image, at the
        original resolution or (``max_width``) scaled down so that the two halves fit in it."""
        full = tuple(self.gt_map.shape)
        size = full
        if max_width is not None and 2 * full[1] > max_width:
            scale = max_width / (2 * full[1])
            size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        h, w = self.batch["image_sizes"][self.index]
        image = self.batch["images"][self.index, :, :h, :w]
        if (h, w) != size:
            image = F.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False)[0]
        image = image.permute(1, 2, 0).float().round().clamp(0, 255).byte().cpu().numpy()
        gt, pred = self.gt_map.cpu(), self.pred_map.cpu()
        if size != full:  # nearest pixel of each id map
            rows, cols = torch.arange(size[0]) * full[0] // size[0], torch.arange(size[1]) * full[1] // size[1]
            gt, pred = gt[rows][:, cols], pred[rows][:, cols]
        pred = panoptic_overlay(image, pred.numpy(), self.pred_segments, self.metadata)
        gt = panoptic_overlay(image, gt.numpy(), self.gt_segments, self.metadata)
        return side_by_side(gt, pred, titles=("ground truth", "prediction"))


def eval_images(batch: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]], metadata: DatasetMetadata,
                device: torch.device | None = None) -> list[EvalImage]:
    """The :class:`EvalImage` of every image of a batch (ground truth moved to ``device``)."""
    missing = [k for k in ("gt_panoptic", "segments_info", "image_ids", "file_names") if k not in batch]
    if missing:
        raise ValueError(f"the batch has no {', '.join(repr(k) for k in missing)}: evaluation needs the "
                         "ground truth of an eval dataset (PanopticDataset(..., is_train=False), "
                         "collated by collate_panoptic)")
    return [EvalImage(batch, i, out, metadata, device) for i, out in enumerate(outputs)]


class Evaluator:
    """Base class of the evaluators (see the module docstring for the protocol)."""

    def reset(self) -> None:
        """Forget every image processed so far."""
        raise NotImplementedError

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        """Add one batch: ``batch`` as collated (docs/interfaces.md section 2), ``outputs`` one
        :class:`EvalImage` per image."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Results over every rank's images (a collective call: every rank makes it)."""
        raise NotImplementedError

    def finish(self, results: Mapping[str, Any]) -> None:
        """Main process, after eval_results.json: ``results`` holds every evaluator's results."""


__all__ = ["EvalImage", "Evaluator", "eval_images", "gt_positions_of"]
