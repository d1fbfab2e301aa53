"""Run a model over a validation set and compute PQ, mIoU and (optionally) COCO box/mask AP.

Ground truth comes from the eval dataset's ``gt_panoptic`` + ``segments_info`` (original
resolution); predictions never round-trip through PNG files.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from panfpn.data.loader import build_dataloader
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.targets import semantic_map
from panfpn.engine import distributed as du
from panfpn.engine.job_setup import move_batch
from panfpn.engine.progress import Progress
from panfpn.evaluation.accumulator import PQAccumulator
from panfpn.evaluation.coco_ap import COCOAPEvaluator
from panfpn.evaluation.pq_rules import format_table
from panfpn.evaluation.semantic import SemSegEvaluator
from panfpn.evaluation.writer import model_segments_to_dataset
from panfpn.modeling.merge import BoxMasks
from panfpn.modeling.postprocess import box_instance_masks
from panfpn.utils.visualize import panoptic_overlay, side_by_side

logger = logging.getLogger("panfpn")


def build_eval_loader(cfg: DictConfig, dataset: Dataset) -> DataLoader:
    """Unpadded per-rank shard of the first ``eval.max_images`` images (all when null)."""
    size = len(dataset)  # type: ignore[arg-type]
    if cfg.eval.max_images and int(cfg.eval.max_images) < size:
        dataset = Subset(dataset, range(int(cfg.eval.max_images)))
    return build_dataloader(dataset, batch_size=int(cfg.eval.batch_size),
                            num_workers=int(cfg.data.num_workers), distributed=True)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, metadata: DatasetMetadata, *, device: torch.device,
    compute_ap: bool = True, max_images: int | None = None, num_vis: int = 0, progress: bool = True,
    writer: Any = None, semantic_writer: Any = None, should_stop: Callable[[], bool] | None = None,
    collector: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader`` (an eval dataset); results are reduced over ranks.

    Returns ``{"panoptic": pq_compute-style dict, "sem_seg": {"mIoU", "IoU", ...},
    "bbox"/"segm": COCO AP dicts (when compute_ap), "num_images", "overlays": [uint8 HxWx3]}``.
    ``writer`` (e.g. a PanopticPredictionWriter) receives every panoptic prediction (thing scores
    included) and ``semantic_writer`` (a SemanticPredictionWriter) every semantic one, when given.
    ``collector`` (e.g. :class:`panfpn.evaluation.worst_images.WorstImages`) is called on the main
    process with ``(image_id, pred id map, pred segments, gt id map, gt segments, make_overlay)``.
    """
    was_training = model.training
    model.eval()
    categories = metadata.to_coco_categories()
    pq = PQAccumulator(categories)
    sem = SemSegEvaluator(metadata.num_sem_classes)
    ap = COCOAPEvaluator(categories) if compute_ap else None
    overlays: list[np.ndarray] = []
    seen = 0
    bar = Progress(loader, desc="eval", bar=progress)  # a log line a minute and a summary without the bar
    for batch in bar:
        if should_stop is not None and should_stop():  # e.g. Ctrl-C during a training run's evaluation
            break
        batch = move_batch(batch, device)
        with box_instance_masks():  # AP encodes the instance masks one at a time from their boxes
            outputs = model(batch)
        for i, out in enumerate(outputs):
            image_id = batch["image_ids"][i]
            id_map, segments = out["panoptic"]
            pred_segments = model_segments_to_dataset(segments, metadata)
            gt_map = batch["gt_panoptic"][i].to(device)
            gt_segments = batch["segments_info"][i]
            pq.update(id_map, pred_segments, gt_map, gt_segments, image_id=image_id)
            sem.update(out["sem_seg"], semantic_map(gt_map, gt_segments, metadata).to(device))
            if ap is not None:
                _add_to_ap(ap, image_id, out["instances"], gt_map, gt_segments, metadata)
            if writer is not None:
                writer.add(image_id, batch["file_names"][i], id_map, pred_segments)
            if semantic_writer is not None:
                semantic_writer.add(image_id, out["sem_seg"])
            if len(overlays) < num_vis and du.is_main_process():
                overlays.append(_overlay(batch, i, id_map, pred_segments, gt_map, gt_segments, metadata))
            if collector is not None and du.is_main_process():
                collector(image_id, id_map, pred_segments, gt_map, gt_segments,
                          partial(_overlay, batch, i, id_map, pred_segments, gt_map, gt_segments, metadata))
            seen += 1
        if max_images is not None and seen >= max_images:
            break
    results: dict[str, Any] = {"panoptic": pq.compute(), "sem_seg": sem.compute(),
                               **(ap.compute() if ap is not None else {})}
    results["num_images"] = _sum_over_ranks(seen, device)
    results["overlays"] = overlays
    if was_training:
        model.train()
    return results


def _add_to_ap(ap: COCOAPEvaluator, image_id: Any, instances: dict, gt_map: torch.Tensor,
               gt_segments: list[dict], metadata: DatasetMetadata) -> None:
    """One image's ground truth and detections (contiguous labels -> dataset category ids) for AP."""
    thing_ids = torch.as_tensor(metadata.thing_ids, device=instances["labels"].device)
    ap.add_ground_truth(image_id, gt_map, gt_segments)
    masks = instances["masks"]
    if isinstance(masks, BoxMasks):  # full size one at a time: K x H x W bytes never exist at once
        masks = _MasksOneByOne(masks)
    ap.update(image_id, instances["boxes"], instances["scores"], thing_ids[instances["labels"]], masks)


class _MasksOneByOne(Sequence):
    """Masks kept inside their boxes as a sequence of full-size bool ``[H, W]`` masks, each made
    when it is read (COCO AP encodes them one by one)."""

    def __init__(self, masks: BoxMasks) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, k: int) -> torch.Tensor:
        if not 0 <= k < len(self.masks):
            raise IndexError(k)
        return self.masks.mask(k)


def _sum_over_ranks(n: int, device: torch.device) -> int:
    return int(du.all_reduce_sum(torch.tensor([n], dtype=torch.int64, device=device)).item())


def _overlay(batch, i, id_map, pred_segments, gt_map, gt_segments, metadata) -> np.ndarray:
    h, w = batch["image_sizes"][i]
    image = batch["images"][i, :, :h, :w].float()[None]
    image = F.interpolate(image, size=tuple(gt_map.shape), mode="bilinear", align_corners=False)
    image = image[0].permute(1, 2, 0).round().clamp(0, 255).byte().cpu().numpy()
    pred = panoptic_overlay(image, id_map.cpu().numpy(), pred_segments, metadata)
    gt = panoptic_overlay(image, gt_map.cpu().numpy(), gt_segments, metadata)
    return side_by_side(gt, pred, titles=("ground truth", "prediction"))


def metrics_to_scalars(metrics: dict) -> dict[str, float]:
    """Flatten evaluation results into TensorBoard scalar names (percent, like papers report)."""
    scalars: dict[str, float] = {}
    for split in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            scalars[f"{key}/{split}"] = 100.0 * metrics["panoptic"][split][key]
    scalars["sem_seg/mIoU"] = 100.0 * metrics["sem_seg"]["mIoU"]
    for task in ("bbox", "segm"):
        if task in metrics:
            for key, value in metrics[task].items():
                if value >= 0:  # COCOeval reports -1 for an area range with no ground truth
                    scalars[f"{task}/{key}"] = 100.0 * value
    return scalars


def format_results(metrics: dict) -> str:
    """The familiar PQ table plus mIoU and AP lines, as printed by tools/eval.py and the demo."""
    lines = [format_table(metrics["panoptic"], decimals=2)]
    lines.append(f"mIoU {100 * metrics['sem_seg']['mIoU']:.2f}")
    for task in ("bbox", "segm"):
        if task in metrics:
            lines.append(f"{task} AP {100 * metrics[task]['AP']:.2f}  AP50 {100 * metrics[task]['AP50']:.2f}"
                         f"  AP75 {100 * metrics[task]['AP75']:.2f}")
    return "\n".join(lines)
