"""Cityscapes instance-level AP: the numbers of cityscapesScripts' ``csEvalInstanceLevelSemanticLabeling``
(the AP / AP50 that Cityscapes papers and Detectron2's CityscapesInstanceEvaluator report), computed
in memory from the panoptic ground truth and the model's instances.

The official rules, as this module applies them (one class, one overlap threshold ``t`` of
0.50, 0.55, ..., 0.95, the float values of ``numpy.arange(0.5, 1.0, 0.05)``):

* Scored classes: the 8 Cityscapes labels with instances that are not ignored in evaluation
  (person, rider, car, truck, bus, train, motorcycle, bicycle); a prediction of another class or
  with no pixel is dropped.
* Overlap = intersection over union of pixel counts; a match needs overlap **greater** than ``t``.
* A ground-truth instance counts when it is no group and has at least 100 pixels. Each such
  instance with no prediction of its class over ``t`` is a false negative. With several, the
  highest score is its true positive and every other one a false positive at its own score
  (duplicates).
* A prediction over ``t`` with no ground-truth segment of its class (a counted instance, a group,
  an instance under 100 pixels) is neither: it is dropped. Any other prediction is a false
  positive when its ignored share, (void pixels + pixels on groups of its class + pixels on its
  class's instances under 100 pixels) / its pixels, is **at most** ``t``, and dropped otherwise; a
  group under 100 pixels counts its pixels twice (the official sum adds the group term and the
  small-instance term).
* AP of the pooled (score, true/false) list of all images: at each distinct score ``s``
  (ascending) precision = TP / (TP + FP) and recall = TP / (all counted instances) of the
  entries scoring at least ``s``, plus a last point (recall 0, precision 1); AP = sum of
  precision_i * (recall_{i-1} - recall_{i+1}) / 2 with recall_{-1} = recall_0 and a recall of 0
  after the last point (the official step widths). Ties are scored together, in no order.
* A class with counted ground truth but no prediction scores 0; without counted ground truth it
  is undefined (NaN there, None here) and left out of the averages. With ground truth and
  predictions but not one entry in the list (every instance missed, every prediction ignored) the
  official script stops with an IndexError; here that class scores 0.
* Per class: AP = mean over the 10 thresholds, AP50 = the value at 0.5; ``AP`` / ``AP50`` =
  the mean over the classes that have one (the official ``nanmean``).
* The official AP_100m / AP_50m need per-instance depth (``medDist`` / ``distConf``), which its
  own ground-truth reader never fills (``distanceAvailable`` is False): not computed.

Ground truth from createPanopticImgs' panoptic files. The official script reads
``*_gtFine_instanceIds.png``: label id for stuff, void and group pixels, label id * 1000 + n for an
instance. createPanopticImgs makes one segment per value of that image, with the value as the
segment id: an instance (value >= 1000) of a thing class is a non-crowd segment, a group (a thing
label's id, < 1000) a crowd segment, and every value whose label is ignored in evaluation is left out
(id 0). So a non-crowd thing segment here is the official instance (same pixels, same count) and a
crowd thing segment its group. Void is the official one, read from the image's instanceIds PNG
(:mod:`panfpn.evaluation.cityscapes_void`: a value equal to an ignored label id; caravan and trailer
instances, 29000 + n and 30000 + n, are ignored classes left out of the panoptic files but not void
for the script) wherever the download's layout has it beside the image (``gtFine/<split>/<city>/``
for ``leftImg8bit/<split>/<city>/``). For an image without it, void is every pixel outside the
panoptic segments, caravan and trailer instances included: a prediction lying on one has a larger
ignored share there, and may be dropped where the script counts a false positive. The evaluation
logs how many images took that fallback and records it as ``void_from``: ``"instanceIds"`` (every
image: the official numbers), ``"panoptic"`` (none) or ``"mixed"``, with the count in
``images_void_from_panoptic`` (``tests/evaluation/test_cityscapes_ap.py`` compares the numbers with
the official script on the cases above).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.cityscapes_void import instance_ids_path, official_void
from panfpn.evaluation.evaluator import EvalImage, Evaluator, gt_positions_of
from panfpn.utils.dist import all_gather_objects, is_main_process, is_multiprocess
from panfpn.utils.errors import ConfigError

logger = logging.getLogger(__name__)

OVERLAPS = np.arange(0.5, 1.0, 0.05)  # the official thresholds, bit for bit
MIN_REGION_SIZE = 100                 # ground-truth instances under this many pixels are not counted
# (name, label id, train id) of the scored classes, in label-id order (the official class order).
INSTANCE_CLASSES = (("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
                    ("bus", 28, 15), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18))


def cityscapes_classes(metadata: DatasetMetadata) -> dict[int, int]:
    """Dataset category id -> scored class index (0..7) of Cityscapes metadata, label ids or train
    ids; a ConfigError naming ``eval.evaluators`` for a dataset without those thing classes."""
    things = {c.id: c.name for c in metadata.categories if c.isthing}
    for column in (1, 2):  # label ids, then train ids (data.metadata.use_train_id)
        wanted = {row[column]: row[0] for row in INSTANCE_CLASSES}
        if things == wanted:
            return {row[column]: k for k, row in enumerate(INSTANCE_CLASSES)}
    expected = ", ".join(f"{name} {label_id}" for name, label_id, _ in INSTANCE_CLASSES)
    raise ConfigError(
        f"config key 'eval.evaluators': cityscapes_ap scores Cityscapes' 8 instance classes ({expected}, or "
        f"train ids 11..18), but dataset {metadata.name!r} has thing categories "
        f"{sorted(things.items())[:10]}{' ...' if len(things) > 10 else ''}; remove cityscapes_ap there")


@dataclass
class ImageClass:
    """One class of one image, what the rules need and no pixels: ground-truth segments (pixel
    count, group or not), predictions (score, pixels, void pixels) and the (gt, pred) overlaps."""

    gt_area: list[int] = field(default_factory=list)
    gt_group: list[bool] = field(default_factory=list)
    pred_score: list[float] = field(default_factory=list)
    pred_area: list[int] = field(default_factory=list)
    pred_void: list[int] = field(default_factory=list)
    overlaps: dict[tuple[int, int], int] = field(default_factory=dict)  # (gt index, pred index) -> pixels


@dataclass
class Entries:
    """The pooled outcome of one class at one threshold: scored entries and missed instances."""

    scores: list[float] = field(default_factory=list)
    true: list[bool] = field(default_factory=list)
    missed: int = 0


def score_class(image: ImageClass, t: float, out: Entries) -> None:
    """Add one image's entries of one class at threshold ``t`` to ``out`` (the module's rules)."""
    counted = [not g and a >= MIN_REGION_SIZE for a, g in zip(image.gt_area, image.gt_group)]
    over: dict[int, list[int]] = {}  # gt index -> predictions overlapping it by more than t
    matched_pred: set[int] = set()
    for (g, p), inter in image.overlaps.items():
        if inter / (image.gt_area[g] + image.pred_area[p] - inter) > t:
            over.setdefault(g, []).append(p)
            matched_pred.add(p)
    for g, is_counted in enumerate(counted):
        if not is_counted:
            continue
        preds = over.get(g)
        if not preds:
            out.missed += 1
            continue
        scores = sorted(image.pred_score[p] for p in preds)
        out.scores += scores
        out.true += [False] * (len(scores) - 1) + [True]  # the best one is the match
    ignored = list(image.pred_void)
    for (g, p), inter in image.overlaps.items():
        ignored[p] += inter * (int(image.gt_group[g]) + int(image.gt_area[g] < MIN_REGION_SIZE))
    for p, score in enumerate(image.pred_score):
        if p not in matched_pred and ignored[p] / image.pred_area[p] <= t:
            out.scores.append(score)
            out.true.append(False)


def average_precision(entries: Entries) -> float:
    """The official area under the precision-recall curve of one class at one threshold (there is
    counted ground truth: ``true`` entries + ``missed`` > 0)."""
    if not entries.scores:  # the official script stops here (IndexError); nothing found: 0
        return 0.0
    scores = np.asarray(entries.scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    true = np.asarray(entries.true, dtype=np.int64)[order]
    _, first = np.unique(scores[order], return_index=True)  # first entry of each distinct score
    true_below = np.concatenate(([0], np.cumsum(true)))[first]
    tp = int(true.sum()) - true_below
    fp = (len(true) - first) - tp
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (int(true.sum()) + entries.missed), 0.0)
    before = np.concatenate((recall[:1], recall[:-1]))
    after = np.append(recall[1:], 0.0)
    return float(np.dot(precision, 0.5 * before - 0.5 * after))


def image_classes(gt_map: torch.Tensor, gt_segments: Sequence[Mapping], labels: Sequence[int],
                  scores: Sequence[float], masks: Any, classes: Mapping[int, int],
                  void: np.ndarray | torch.Tensor | None = None,
                  positions: np.ndarray | None = None) -> list[ImageClass]:
    """One :class:`ImageClass` per scored class of one image. ``labels``: dataset category ids of
    the predictions; ``masks``: bool ``[K, H, W]``, a sequence of ``K`` bool ``[H, W]`` or a
    ``BoxMasks`` (read inside each box: no full-size mask is made); ``void``: bool ``[H, W]``, the
    official void pixels (:func:`panfpn.evaluation.cityscapes_void.official_void`), or None for the
    pixels outside every segment of ``gt_map``; ``positions``:
    :func:`~panfpn.evaluation.evaluator.gt_positions_of` of ``gt_map`` in ``gt_segments`` when
    already computed (``EvalImage.gt_positions``)."""
    void = None if void is None else _host(void).astype(bool, copy=False)
    out = [ImageClass() for _ in INSTANCE_CLASSES]
    seg_ids = [int(seg["id"]) for seg in gt_segments]
    # each pixel's segment (len(seg_ids): none)
    dense = gt_positions_of(gt_map, gt_segments) if positions is None else positions
    area = np.bincount(dense.reshape(-1), minlength=len(seg_ids) + 1).tolist()
    slot: dict[int, tuple[int, int]] = {}  # position in gt_segments -> (class, index in its class)
    for i, seg in enumerate(gt_segments):
        k = classes.get(int(seg["category_id"]))
        if k is not None:
            slot[i] = (k, len(out[k].gt_area))
            out[k].gt_area.append(int(area[i]))
            out[k].gt_group.append(bool(seg.get("iscrowd", 0)))
    boxed = hasattr(masks, "crops") and hasattr(masks, "origins")
    for j, (label, score) in enumerate(zip(labels, scores)):
        k = classes.get(int(label))
        if k is None:
            continue
        if boxed:
            mask, (y0, x0) = _host(masks.crops[j]).astype(bool, copy=False), masks.origins[j]
            window = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        else:
            full = _host(masks[j]).astype(bool, copy=False)
            window = _extent(full)
            if window is None:
                continue
            mask = full[window]
        under = dense[window][mask]
        if under.size == 0:
            continue
        hits = np.bincount(under, minlength=len(seg_ids) + 1)
        cls, p = out[k], len(out[k].pred_score)
        cls.pred_score.append(float(score))
        cls.pred_area.append(int(under.size))
        for i in np.flatnonzero(hits[:-1]).tolist():
            if i in slot and slot[i][0] == k:
                cls.overlaps[(slot[i][1], p)] = int(hits[i])
        cls.pred_void.append(int(hits[-1]) if void is None else int(np.count_nonzero(void[window][mask])))
    return out


def _host(array: Any) -> np.ndarray:
    """A tensor (any device) or array as a numpy array on the host: the per-mask work below is
    numpy's (torch's CPU reductions over bool maps were 100x slower here)."""
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _extent(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns a bool ``[H, W]`` mask spans, or None when it is empty: a prediction
    is read inside that box only (at 2048x1024 a whole-image read per instance took ~40 ms)."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def summarize(entries: Sequence[Sequence[Entries]], have_gt: Sequence[bool], have_pred: Sequence[bool],
              category_ids: Sequence[int]) -> dict[str, Any]:
    """``{"AP", "AP50", "per_class": {category id: {"name", "AP", "AP50"} | None}}`` (fractions; None
    where undefined) of the pooled entries ``[class][threshold]``."""
    ap = np.full((len(INSTANCE_CLASSES), len(OVERLAPS)), np.nan)
    for k in range(len(INSTANCE_CLASSES)):
        if have_gt[k]:
            ap[k] = [average_precision(e) if have_pred[k] else 0.0 for e in entries[k]]
    scored = ~np.isnan(ap[:, 0])
    per_class = {int(cat): ({"name": INSTANCE_CLASSES[k][0], "AP": float(ap[k].mean()), "AP50": float(ap[k, 0])}
                            if scored[k] else None) for k, cat in enumerate(category_ids)}
    return {"AP": float(ap[scored].mean()) if scored.any() else None,
            "AP50": float(ap[scored, 0].mean()) if scored.any() else None,
            "per_class": per_class}


class CityscapesAP(Evaluator):
    """``{"cityscapes_ap": {"AP", "AP50", "per_class", "void_from", "images_void_from_panoptic"}}``:
    cityscapesScripts' instance-level AP of the model's instances (module docstring), fractions like
    ``segm``; per image only the scored entries are kept. ``write_dir``: also write the official
    prediction files there (:mod:`panfpn.evaluation.cityscapes_instance_files`)."""

    def __init__(self, metadata: DatasetMetadata, write_dir: str | Path | None = None) -> None:
        self.classes = cityscapes_classes(metadata)
        self.category_ids = sorted(self.classes, key=self.classes.get)
        self.thing_ids = torch.as_tensor(metadata.thing_ids)
        self.write_dir = None if write_dir is None else Path(write_dir)
        self.reset()

    def reset(self) -> None:
        self.entries = [[Entries() for _ in OVERLAPS] for _ in INSTANCE_CLASSES]
        self.have_gt = [False] * len(INSTANCE_CLASSES)
        self.have_pred = [False] * len(INSTANCE_CLASSES)
        self.void_counts = {"instanceIds": 0, "panoptic": 0}  # images by where their void came from
        self.without_ids: str | None = None  # the first image whose void came from the panoptic files

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            instances = img.output["instances"]
            labels = self.thing_ids.to(instances["labels"].device)[instances["labels"]].tolist()
            scores = instances["scores"].tolist()
            ids_path = instance_ids_path(img.image_path)
            void, name = None, None
            if ids_path is not None and ids_path.is_file():
                void = official_void(ids_path, tuple(img.gt_map.shape), img.image_id)
            elif ids_path is not None:
                name = f"image id {img.image_id!r}: no {ids_path}"
            else:
                name = (f"image id {img.image_id!r}: {img.image_path or 'image path unknown'} is not in the "
                        "leftImg8bit/<split>/<city>/ layout")
            self.add_image(img.gt_map, img.gt_segments, labels, scores, instances["masks"], void=void, image=name,
                           positions=img.gt_positions)
            if self.write_dir is not None:
                from panfpn.evaluation.cityscapes_instance_files import write_instance_files

                write_instance_files(self.write_dir, img.image_id, labels, scores, instances["masks"], self.classes)

    def add_image(self, gt_map: torch.Tensor, gt_segments: Sequence[Mapping], labels: Sequence[int],
                  scores: Sequence[float], masks: Any, void: np.ndarray | torch.Tensor | None = None,
                  image: str | None = None, positions: np.ndarray | None = None) -> None:
        """Score one image: ground truth as the dataset gives it, predictions in dataset ids, ``void``
        the official void pixels or None (the panoptic files' void; ``image`` names it in the log),
        ``positions`` as :func:`image_classes` takes them."""
        self.void_counts["panoptic" if void is None else "instanceIds"] += 1
        if void is None and self.without_ids is None:
            self.without_ids = image or f"image {sum(self.void_counts.values())} given to add_image"
        classes = image_classes(gt_map, gt_segments, labels, scores, masks, self.classes, void, positions)
        for k, cls in enumerate(classes):
            self.have_gt[k] |= any(not g and a >= MIN_REGION_SIZE for a, g in zip(cls.gt_area, cls.gt_group))
            self.have_pred[k] |= bool(cls.pred_score)
            for t, out in zip(OVERLAPS, self.entries[k]):
                score_class(cls, float(t), out)

    def local_state(self) -> tuple:
        """What :meth:`evaluate` gathers from each rank."""
        return self.entries, self.have_gt, self.have_pred, self.void_counts, self.without_ids

    def evaluate(self) -> dict[str, Any]:
        entries, have_gt, have_pred, counts, without_ids = self.local_state()
        if is_multiprocess():
            parts = all_gather_objects(self.local_state())
            entries = [[Entries([s for p in parts for s in p[0][k][i].scores],
                                [b for p in parts for b in p[0][k][i].true],
                                sum(p[0][k][i].missed for p in parts))
                        for i in range(len(OVERLAPS))] for k in range(len(INSTANCE_CLASSES))]
            have_gt = [any(p[1][k] for p in parts) for k in range(len(INSTANCE_CLASSES))]
            have_pred = [any(p[2][k] for p in parts) for k in range(len(INSTANCE_CLASSES))]
            counts = {key: sum(p[3][key] for p in parts) for key in counts}
            without_ids = next((p[4] for p in parts if p[4] is not None), None)
        exact, fallback = counts["instanceIds"], counts["panoptic"]
        if fallback and is_main_process():
            logger.warning("cityscapes_ap: %d of %d images have no gtFine instanceIds PNG beside their image (first: "
                           "%s); their void is the panoptic files', where caravan and trailer instances are void "
                           "too, so AP may differ from the official script's (void_from=%s)", fallback,
                           exact + fallback, without_ids, "panoptic" if not exact else "mixed")
        result = summarize(entries, have_gt, have_pred, self.category_ids)
        result["void_from"] = (None if not exact + fallback else "instanceIds" if not fallback
                               else "panoptic" if not exact else "mixed")
        result["images_void_from_panoptic"] = fallback
        return {"cityscapes_ap": result}


__all__ = ["CityscapesAP", "INSTANCE_CLASSES", "MIN_REGION_SIZE", "OVERLAPS", "average_precision",
           "cityscapes_classes", "image_classes", "score_class", "summarize"]
