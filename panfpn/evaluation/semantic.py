"""Semantic segmentation metrics (per-class IoU, mIoU, pixel accuracy) from a confusion matrix.

The confusion matrix is accumulated with one ``bincount`` per image on the labels' device (no
host sync) and summed across ranks on :meth:`SemSegEvaluator.compute`.
"""

from __future__ import annotations

import torch

from panfpn.data.metadata import IGNORE_LABEL
from panfpn.utils.dist import all_reduce_sum


@torch.no_grad()
def confusion_counts(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``[C + 1, C + 1]`` pixel counts of (ground-truth label, predicted label) of ``pred`` and
    ``gt`` (int ``[..., H, W]`` of one shape); row / column C: labels outside ``0..C-1`` (the
    unscored ground truth, out-of-range predictions)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth "
                         f"{tuple(gt.shape)} differ in shape")
    c = num_classes
    pred = pred.to(gt.device).reshape(-1).long()
    gt = gt.reshape(-1).long()
    gt = torch.where((gt >= 0) & (gt < c), gt, c)
    pred = torch.where((pred >= 0) & (pred < c), pred, c)
    return torch.bincount(gt * (c + 1) + pred, minlength=(c + 1) ** 2).reshape(c + 1, c + 1)


class SemSegEvaluator:
    """Confusion-matrix semantic segmentation evaluation.

    Args:
        num_classes: C; labels ``0..C-1``.
        ignore_label: ground-truth pixels with this label (or any label outside ``0..C-1``)
            are not scored. Predicted labels outside ``0..C-1`` count as wrong.
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.reset()

    def reset(self) -> None:
        # Row/column C collects unscored ground truth and out-of-range predictions.
        self.confusion: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add one image (or a batch): ``pred`` and ``gt`` int ``[..., H, W]`` of one shape."""
        self.add(confusion_counts(pred, gt, self.num_classes))

    def add(self, counts: torch.Tensor) -> None:
        """Add the :func:`confusion_counts` of one image (computed once for every evaluator that
        needs them: :attr:`panfpn.evaluation.evaluator.EvalImage.sem_confusion`)."""
        if self.confusion is None:
            self.confusion = counts.clone()
        else:
            self.confusion += counts.to(self.confusion.device)

    def reduced_confusion(self) -> torch.Tensor:
        """float64 ``[C, C + 1]`` counts summed over ranks: rows = scored ground-truth labels, columns =
        predicted labels (column C: out-of-range predictions)."""
        c = self.num_classes
        conf = self.confusion if self.confusion is not None else torch.zeros(
            c + 1, c + 1, dtype=torch.long)
        return all_reduce_sum(conf).cpu()[:c].double()  # drop unscored ground truth

    def compute(self) -> dict:
        """Metrics as fractions.

        Returns:
            ``{"mIoU", "fwIoU", "mACC", "pACC", "IoU": [C] (nan for a class absent from both
            prediction and ground truth), "ACC": [C] (nan for a class absent from the ground
            truth)}``; the means are over classes whose value is not nan.
        """
        conf = self.reduced_confusion()
        c = self.num_classes
        tp = conf.diagonal()[:c]
        gt_count = conf.sum(1)
        pred_count = conf[:, :c].sum(0)
        union = gt_count + pred_count - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt_count > 0, tp / gt_count.clamp(min=1), nan)
        total = gt_count.sum()
        valid_iou = ~torch.isnan(iou)
        freq = gt_count / total.clamp(min=1)
        return {
            "mIoU": float(iou[valid_iou].mean()) if valid_iou.any() else 0.0,
            "fwIoU": float((freq[valid_iou] * iou[valid_iou]).sum()),
            "mACC": float(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else 0.0,
            "pACC": float(tp.sum() / total) if total > 0 else 0.0,
            "IoU": iou.tolist(),
            "ACC": acc.tolist(),
        }
