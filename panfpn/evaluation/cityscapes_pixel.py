"""Cityscapes' four pixel-level scores (IoU, iIoU, IoU_sup, iIoU_sup) as cityscapesScripts'
``csEvalPixelLevelSemanticLabeling`` computes them (the four Detectron2's CityscapesSemSegEvaluator
reports), natively from the semantic argmax and the panoptic ground truth.

The official rules, as this module applies them:

* **Classes**: the 19 labels of cityscapesScripts' ``labels.py`` not ``ignoreInEval``; ground-truth
  pixels of the other labels are scored nowhere (neither as a false negative nor as the row of a
  false positive). A class score is NaN when its denominator is 0; every average is the mean of the
  scores that are not NaN (NaN when none is).
* **IoU** (class level): ``tp / (tp + fp + fn)`` from the pixel confusion matrix: fn counts every
  other prediction on the class's ground truth, fp the class's predictions on the ground truth of
  the other evaluated classes. Equal to ``sem_seg``'s per-class IoU; the average is its mIoU.
* **iIoU** (class level, the 8 thing classes): each ground-truth instance's pixels weigh
  ``avg_size(class) / instance_size`` (:data:`AVG_CLASS_SIZE`, the official script's averages), so
  that a small instance counts as much as a large one. ``tp_w`` sums, over the class's instances,
  weight x (its pixels predicted as its class); ``fn_w`` weight x (its other pixels). The false
  positives are not weighted (they belong to no instance): the class's fp above.
  ``iIoU = tp_w / (tp_w + fp + fn_w)``.
* **IoU_sup / iIoU_sup** (category level): the same over the 7 evaluated categories (flat,
  construction, object, nature, sky, human, vehicle; ``void`` holds only ignored labels): a
  prediction of any class of the category counts as right (rider on a person is a human tp); fp are
  predictions of the category on ground truth of evaluated classes outside it. Only the categories
  whose labels all have instances (human, vehicle) have an iIoU; the others are NaN, so iIoU_sup is
  the mean over those two. (The official vehicle mask also lists caravan and trailer, labels the
  model never predicts: no difference.)

Ground truth: the panoptic ground truth of cityscapesScripts' ``createPanopticImgs``, which keeps the
values of ``*_gtFine_instanceIds.png`` as segment ids for every label not ignored in evaluation (the
others become void): a thing instance keeps ``labelId * 1000 + k`` (non-crowd), a group (crowd) and
stuff keep their ``labelId`` (< 1000). The official iIoU takes the instances to be the ids above 1000
whose label is evaluated, which are exactly the non-crowd thing segments of that ground truth, pixel
for pixel (an id of exactly 1000 would be label 1, ego vehicle, ignored and void in both). The
semantic ground truth (each segment's class, void = not scored) gives the official matrix's rows.
The prediction is the model's semantic argmax at the original resolution (``output["sem_seg"]``, the
one ``sem_seg`` scores), in the model's semantic labels (train-id order, with label-id or train-id
metadata alike): the official label-id PNG of that map scores the same.

Values are fractions, as ``sem_seg``'s mIoU (shown in percent in tables and TensorBoard).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from panfpn.data.builtin_meta import cityscapes_panoptic_categories
from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.cityscapes_pixel_names import NAME, SCORES
from panfpn.evaluation.evaluator import EvalImage, Evaluator, gt_positions_of
from panfpn.evaluation.semantic import SemSegEvaluator
from panfpn.utils.dist import all_reduce_sum
from panfpn.utils.errors import ConfigError

# Average pixels per instance of each evaluated thing class, the official script's averages
# (cityscapesScripts' evalPixelLevelSemanticLabeling, args.avgClassSize).
AVG_CLASS_SIZE = {
    "person": 3462.4756337644, "rider": 3930.4788056518, "car": 12794.0202738185,
    "truck": 27855.1264367816, "bus": 35732.1511111111, "train": 67583.7075812274,
    "motorcycle": 6298.7200839748, "bicycle": 4672.3249222261,
}
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


def cityscapes_categories_of(metadata: DatasetMetadata) -> list[str] | None:
    """The Cityscapes category (flat, ..., vehicle) of each semantic label of ``metadata``, or None
    when its classes are not Cityscapes' 19 (label ids or train ids) in semantic mode ``all``."""
    if metadata.sem_seg_mode != "all":
        return None
    ours = {(c.id, c.name, c.isthing) for c in metadata.categories}
    for use_train_id in (False, True):
        official = cityscapes_panoptic_categories(use_train_id)
        if ours == {(c["id"], c["name"], bool(c["isthing"])) for c in official}:
            category = {c["id"]: c["supercategory"] for c in official}
            return [category[int(cat_id)] for cat_id in metadata.sem_label_to_category]
    return None


def _ratio(num: float, denom: float) -> float:
    return num / denom if denom > 0 else math.nan


def _mean(values: Sequence[float]) -> float:
    scored = [v for v in values if not math.isnan(v)]
    return sum(scored) / len(scored) if scored else math.nan


class CityscapesPixelScores:
    """Accumulates the confusion matrix and the per-class / per-category weighted instance tp and
    fn sums of Cityscapes' pixel-level evaluation (module docstring); :meth:`compute` reduces them
    over ranks."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        categories = cityscapes_categories_of(metadata)
        if categories is None:
            raise ValueError(f"dataset {metadata.name!r} does not have Cityscapes' 19 evaluated classes "
                             "(label ids or train ids)")
        self.names = [metadata.category(int(c)).name for c in metadata.sem_label_to_category]
        self.label_of = metadata.sem_lut()  # dataset category id -> semantic label
        c = len(self.names)
        self.members = [[i for i in range(c) if categories[i] == k] for k in CATEGORIES]
        self.weights = torch.tensor([AVG_CLASS_SIZE.get(n, 0.0) for n in self.names], dtype=torch.float64)
        # instance-level categories: those whose classes all have instances (human, vehicle)
        self.inst_categories = [k for k, m in enumerate(self.members)
                                if all(self.names[i] in AVG_CLASS_SIZE for i in m)]
        self.category_index = torch.tensor([CATEGORIES.index(k) for k in categories], dtype=torch.int64)
        self.membership = torch.tensor([[categories[j] == categories[i] for j in range(c)] for i in range(c)],
                                       dtype=torch.float64)  # [label, label]: same category
        self.confusion = SemSegEvaluator(c)
        self.reset()

    def reset(self) -> None:
        c = len(self.names)
        self.confusion.reset()
        # row 0: weighted tp, row 1: weighted fn; per semantic label, and per category of CATEGORIES
        self.class_sums = torch.zeros(2, c, dtype=torch.float64)
        self.category_sums = torch.zeros(2, len(CATEGORIES), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, sem_gt: torch.Tensor, gt_map: torch.Tensor,
               gt_segments: Sequence[Mapping], confusion: torch.Tensor | None = None,
               positions: np.ndarray | None = None) -> None:
        """Add one image: ``pred`` int ``[H, W]`` semantic labels, ``sem_gt`` its semantic ground
        truth (255 = not scored), ``gt_map`` + ``gt_segments`` its panoptic ground truth;
        ``confusion``: the image's :func:`~panfpn.evaluation.semantic.confusion_counts` and
        ``positions``: :func:`~panfpn.evaluation.evaluator.gt_positions_of` of ``gt_map`` in
        ``gt_segments``, when already computed (``EvalImage.sem_confusion``, ``gt_positions``)."""
        if confusion is None:
            self.confusion.update(pred, sem_gt)
        else:
            self.confusion.add(confusion)
        # (position in gt_segments, semantic label) of the instances iIoU weighs
        labelled = ((i, self.label_of[int(s["category_id"])]) for i, s in enumerate(gt_segments)
                    if not s.get("iscrowd", 0))
        instances = [(i, label) for i, label in labelled if self.names[label] in AVG_CLASS_SIZE]
        if not instances:
            return
        c = len(self.names)
        if positions is None:
            positions = gt_positions_of(gt_map, gt_segments)
        instance_of = np.full(len(gt_segments) + 1, -1, dtype=np.int64)  # segment position -> instance, -1: none
        instance_of[[i for i, _ in instances]] = np.arange(len(instances))
        inst = torch.from_numpy(instance_of[positions].reshape(-1))
        inside = inst >= 0
        p = pred.cpu().reshape(-1).long()
        p = torch.where((p >= 0) & (p < c), p, c)[inside]
        # counts[n, l]: pixels of instance n predicted as semantic label l (column c: out of range)
        counts = torch.bincount(inst[inside] * (c + 1) + p, minlength=len(instances) * (c + 1))
        counts = counts.reshape(len(instances), c + 1).double()
        sizes = counts.sum(1)
        labels = torch.tensor([label for _, label in instances], dtype=torch.int64)
        keep = sizes > 0  # a segment listed without pixels is no instance for the official script
        labels, counts, sizes = labels[keep], counts[keep], sizes[keep]
        weight = self.weights[labels] / sizes
        tp = counts[torch.arange(len(labels)), labels]
        self.class_sums[0].index_add_(0, labels, tp * weight)
        self.class_sums[1].index_add_(0, labels, (sizes - tp) * weight)
        category = self.category_index[labels]
        cat_tp = (counts[:, :c] * self.membership[labels]).sum(1)  # its pixels predicted in its category
        self.category_sums[0].index_add_(0, category, cat_tp * weight)
        self.category_sums[1].index_add_(0, category, (sizes - cat_tp) * weight)

    def compute(self) -> dict[str, Any]:
        """``{"IoU", "iIoU", "IoU_sup", "iIoU_sup", "per_class": {name: {"IoU"[, "iIoU"]}},
        "per_category": {category: {"IoU"[, "iIoU"]}}}`` over every rank's images (fractions; NaN
        for an undefined score, left out of the averages)."""
        conf = self.confusion.reduced_confusion()  # [C, C+1]
        class_sums = all_reduce_sum(self.class_sums)
        category_sums = all_reduce_sum(self.category_sums)
        c = len(self.names)
        per_class: dict[str, dict[str, float]] = {}
        for i, name in enumerate(self.names):
            tp = float(conf[i, i])
            fn = float(conf[i].sum()) - tp
            fp = float(conf[:, i].sum()) - tp
            per_class[name] = {"IoU": _ratio(tp, tp + fp + fn)}
            if name in AVG_CLASS_SIZE:
                tp_w, fn_w = float(class_sums[0, i]), float(class_sums[1, i])
                per_class[name]["iIoU"] = _ratio(tp_w, tp_w + fp + fn_w)
        per_category: dict[str, dict[str, float]] = {}
        for k, category in enumerate(CATEGORIES):
            inside = torch.zeros(c, dtype=torch.bool)
            inside[self.members[k]] = True
            tp = float(conf[inside][:, :c][:, inside].sum())
            fn = float(conf[inside].sum()) - tp
            fp = float(conf[~inside][:, :c][:, inside].sum())
            per_category[category] = {"IoU": _ratio(tp, tp + fp + fn)}
            if k in self.inst_categories:
                tp_w, fn_w = float(category_sums[0, k]), float(category_sums[1, k])
                per_category[category]["iIoU"] = _ratio(tp_w, tp_w + fp + fn_w)
        return {
            "IoU": _mean([v["IoU"] for v in per_class.values()]),
            "iIoU": _mean([v["iIoU"] for v in per_class.values() if "iIoU" in v]),
            "IoU_sup": _mean([v["IoU"] for v in per_category.values()]),
            "iIoU_sup": _mean([v["iIoU"] for v in per_category.values() if "iIoU" in v]),
            "per_class": per_class,
            "per_category": per_category,
        }


class CityscapesSemSeg(Evaluator):
    """``{"cityscapes_sem_seg": CityscapesPixelScores.compute()}``: Cityscapes' IoU, iIoU, IoU_sup and
    iIoU_sup of the semantic argmax (``eval.evaluators: [cityscapes_sem_seg]``)."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        if cityscapes_categories_of(metadata) is None:
            raise ConfigError(f"config key 'eval.evaluators': {NAME!r} scores Cityscapes' 19 classes, but dataset "
                              f"{metadata.name!r} has other categories; remove it from eval.evaluators")
        self.scores = CityscapesPixelScores(metadata)

    def reset(self) -> None:
        self.scores.reset()

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self.scores.update(img.output["sem_seg"], img.sem_gt, img.gt_map, img.gt_segments, img.sem_confusion,
                               img.gt_positions)

    def evaluate(self) -> dict[str, Any]:
        return {NAME: self.scores.compute()}


__all__ = ["AVG_CLASS_SIZE", "CATEGORIES", "SCORES", "CityscapesPixelScores", "CityscapesSemSeg", "cityscapes_categories_of"]
