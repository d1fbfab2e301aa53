"""Run a model over a validation set and feed each batch to a list of evaluators (PQ, mIoU, COCO
AP, writers, ...: :mod:`panfpn.evaluation.evaluator` for the protocol, :mod:`panfpn.evaluation.build`
for the list a config asks for).

Ground truth comes from the eval dataset's ``gt_panoptic`` + ``segments_info`` (original
resolution); predictions never round-trip through PNG files.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from panfpn.data.loader import build_dataloader
from panfpn.data.metadata import DatasetMetadata
from panfpn.engine import distributed as du
from panfpn.engine.job_setup import move_batch
from panfpn.evaluation.cityscapes_pixel import SCORES as CITYSCAPES_PIXEL_SCORES
from panfpn.evaluation.coco_ap import ap_text
from panfpn.evaluation.evaluator import Evaluator, eval_images
from panfpn.engine.progress import Progress
from panfpn.evaluation.pq_rules import format_table
from panfpn.modeling.build import check_labels_fit, model_labels
from panfpn.modeling.panoptic_fpn.postprocess import box_instance_masks
from panfpn.utils.percent import percent, percent_text

logger = logging.getLogger("panfpn")


def build_eval_loader(cfg: DictConfig, dataset: Dataset) -> DataLoader:
    """Unpadded per-rank shard of the first ``eval.max_images`` images (all when null)."""
    size = len(dataset)  # type: ignore[arg-type]
    if cfg.eval.max_images and int(cfg.eval.max_images) < size:
        dataset = Subset(dataset, range(int(cfg.eval.max_images)))
    return build_dataloader(dataset, batch_size=int(cfg.eval.batch_size),
                            num_workers=int(cfg.data.num_workers), distributed=True)


def evaluate(
    model: torch.nn.Module, loader: DataLoader, metadata: DatasetMetadata, evaluators: Sequence[Evaluator], *,
    device: torch.device, max_images: int | None = None, progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run ``model`` on ``loader`` (an eval dataset) and feed every batch to each evaluator (built by
    :func:`panfpn.evaluation.build.build_evaluators`); returns their results, reduced over ranks,
    merged into one dict, plus ``num_images``: e.g. ``{"panoptic": pq_compute-style dict, "sem_seg":
    {"mIoU", "IoU", ...}, "bbox"/"segm": COCO AP dicts, "overlays": [uint8 HxWx3], "num_images"}``.
    The model runs in eval mode and gets its own mode back, also when an error stops the loop.
    """
    check_labels_fit(model_labels(model), metadata, "given to evaluate()")  # a model of other classes
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, loader, metadata, evaluators, device=device, max_images=max_images,
                         progress=progress, should_stop=should_stop)
    finally:
        model.train(was_training)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: DataLoader, metadata: DatasetMetadata, evaluators: Sequence[Evaluator],
              *, device: torch.device, max_images: int | None, progress: bool,
              should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    for evaluator in evaluators:
        evaluator.reset()
    seen = 0
    bar = Progress(loader, desc="eval", bar=progress)  # a log line a minute and a summary without the bar
    for batch in bar:
        if should_stop is not None and should_stop():  # e.g. Ctrl-C during a training run's evaluation
            break
        batch = move_batch(batch, device)
        with box_instance_masks():  # AP encodes the instance masks one at a time from their boxes
            outputs = eval_images(batch, model(batch), metadata, device)
        for evaluator in evaluators:
            evaluator.process(batch, outputs)
        seen += len(outputs)
        if max_images is not None and seen >= max_images:
            break
    results: dict[str, Any] = {}
    for evaluator in evaluators:  # every rank, same order: evaluate() gathers over ranks
        part = evaluator.evaluate()
        clash = sorted(set(part) & set(results))
        if clash:
            raise ValueError(f"{type(evaluator).__name__} returns {clash}, already returned by another evaluator")
        results.update(part)
    results["num_images"] = _sum_over_ranks(seen, device)
    return results


def _sum_over_ranks(n: int, device: torch.device) -> int:
    return int(du.all_reduce_sum(torch.tensor([n], dtype=torch.int64, device=device)).item())


def _cityscapes_pixel_scores(metrics: dict) -> dict[str, float | None]:
    """IoU, iIoU, IoU_sup, iIoU_sup of ``cityscapes_sem_seg`` in percent; None where undefined (NaN,
    or null once the results went through JSON); empty when that evaluator did not run."""
    scores = metrics.get("cityscapes_sem_seg") or {}
    return {k: percent(scores.get(k)) for k in CITYSCAPES_PIXEL_SCORES} if scores else {}


def metrics_to_scalars(metrics: dict) -> dict[str, float]:
    """Flatten evaluation results into TensorBoard scalar names (percent, like papers report)."""
    scalars: dict[str, float] = {}
    for split in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            scalars[f"{key}/{split}"] = 100.0 * metrics["panoptic"][split][key]
    scalars["sem_seg/mIoU"] = 100.0 * metrics["sem_seg"]["mIoU"]
    for key, value in _cityscapes_pixel_scores(metrics).items():
        if value is not None:
            scalars[f"cityscapes_sem_seg/{key}"] = value
    for task in ("bbox", "segm"):
        if task in metrics:
            for key, value in metrics[task].items():
                if isinstance(value, (int, float)) and value >= 0:  # -1: no ground truth; not per_class
                    scalars[f"{task}/{key}"] = 100.0 * value
    for key in ("AP", "AP50"):  # cityscapesScripts' instance-level AP (None: no class with ground truth)
        value = metrics.get("cityscapes_ap", {}).get(key)
        if value is not None:
            scalars[f"cityscapes_ap/{key}"] = 100.0 * value
    return scalars


def format_results(metrics: dict) -> str:
    """The familiar PQ table plus mIoU and AP lines, as printed by tools/eval.py and the demo."""
    lines = [format_table(metrics["panoptic"], decimals=2)]
    lines.append(f"mIoU {100 * metrics['sem_seg']['mIoU']:.2f}")
    if "cityscapes_sem_seg" in metrics:
        scores = metrics["cityscapes_sem_seg"] or {}
        lines.append("Cityscapes  " + "  ".join(f"{k} {percent_text(scores.get(k))}"
                                                for k in (CITYSCAPES_PIXEL_SCORES if scores else ())))
    for task in ("bbox", "segm"):
        if task in metrics:
            lines.append(f"{task} AP {ap_text(metrics[task]['AP'])}  AP50 {ap_text(metrics[task]['AP50'])}"
                         f"  AP75 {ap_text(metrics[task]['AP75'])}")
    if "cityscapes_ap" in metrics:
        cs = metrics["cityscapes_ap"]
        lines.append("Cityscapes instance AP " + "  ".join(f"{key} {percent_text(cs[key])}" for key in ("AP", "AP50")))
    if "panoptic_by_area" in metrics:
        lines.append("PQ by area  " + "  ".join(f"{b} {100 * metrics['panoptic_by_area'][b]['All']['pq']:.2f}"
                                                for b in ("small", "medium", "large")))
    return "\n".join(lines)
