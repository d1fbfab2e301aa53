"""PQ on Cityscapes equals cityscapesscripts' evalPanopticSemanticLabeling class by class, on ground
truth written by its createPanopticImgs and predictions made to hit its rules: void (ego vehicle,
rectification border, 'unlabeled', caravan) left out of the union and ignoring a segment, crowd
regions ('car group', a train and a person group: instance id < 1000) ignoring a prediction of their
class only, an IoU of exactly 0.5 (no match), a wrong class, a missed segment, a class in no ground
truth, images of three sizes. Both the in-memory evaluator and the files our writer leaves. The
semantic PNGs of the same predictions give evalPixelLevelSemanticLabeling's class IoUs and mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.collate import collate_panoptic
from panfpn.engine.eval_loop import evaluate
from panfpn.evaluation import pq_compute
from panfpn.evaluation.evaluators import PanopticPNGWriter, PanopticQuality, SemanticPNGWriter, SemanticSegmentation

official = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
from cityscapes_layout import create_panoptic_imgs, write_gt_fine  # noqa: E402


def _frankfurt() -> np.ndarray:
    m = np.full((32, 64), 23)                   # sky
    m[16:] = 7                                  # road
    m[2:8, 0:16] = 11                           # building
    m[0:2] = 0                                  # unlabeled: void
    m[:, 0:2] = 2                               # rectification border: void
    m[26:, 56:] = 1                             # ego vehicle: void
    m[18:24, 40:50] = 26000                     # car A
    m[18:24, 4:14] = 26001                      # car B
    m[8:14, 20:32] = 26                         # car group (crowd)
    m[18:26, 20:24] = 24000                     # person
    m[8:14, 40:52] = 29000                      # caravan: ignored in eval, void
    return m


def _lindau() -> np.ndarray:
    m = np.full((24, 40), 21)                   # vegetation
    m[12:] = 8                                  # sidewalk
    m[14:20, 4:14] = 28000                      # bus
    m[2:8, 20:30] = 31                          # train group (crowd)
    m[14:20, 24:34] = 24                        # person group (crowd)
    return m


def _munster() -> np.ndarray:
    m = np.full((40, 48), 22)                   # terrain, no thing at all
    m[:10] = 23                                 # sky
    return m


GT = {"frankfurt_000000_000294": _frankfurt(), "lindau_000001_000019": _lindau(),
      "munster_000002_000019": _munster()}


def _box(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def _predictions(image_id: str) -> list[tuple[str, np.ndarray]]:
    """(class name, mask) of each predicted segment, later ones painted over earlier ones."""
    gt = GT[image_id]
    shape = gt.shape
    if image_id.startswith("frankfurt"):
        return [
            ("road", gt == 7),
            ("sky", gt == 23),                   # building: missed
            # car A plus the ego vehicle plus 20 road pixels: IoU 60/128 counting the void, 60/80 without
            ("car", (gt == 26000) | (gt == 1) | _box(shape, slice(28, 30), slice(46, 56))),
            ("truck", gt == 26001),              # car B as a truck
            # 72 car-group pixels of 96: ignored (more than half is crowd of its class)
            ("car", (gt == 26) | _box(shape, slice(8, 14), slice(32, 36))),
            ("person", gt == 24000),
            ("rider", (gt == 29000) | _box(shape, slice(8, 14), slice(52, 54))),  # 72 of 84 void: ignored
            # 20 void + 20 sky pixels: exactly half void is not more than half: a false positive
            ("bicycle", _box(shape, slice(0, 2), slice(10, 20)) | _box(shape, slice(2, 4), slice(30, 40))),
        ]
    if image_id.startswith("lindau"):
        return [
            ("vegetation", gt == 21),
            ("sidewalk", gt == 8),
            ("bus", (gt == 28000) | _box(shape, slice(20, 24), slice(4, 19))),  # IoU 60/120 = 0.5: no match
            ("train", gt == 31),                 # on the train group: ignored
            ("rider", gt == 24),                 # on a person group: a rider false positive
        ]
    return [("terrain", gt == 22), ("sky", gt == 23),
            ("wall", _box(shape, slice(20, 30), slice(10, 20)))]  # a class in no ground truth


class ScriptedModel(torch.nn.Module):
    """The segments of :func:`_predictions`, in the model's output format; semantic labels: each
    segment's class, terrain elsewhere (void and crowd pixels included)."""

    def __init__(self, metadata) -> None:
        super().__init__()
        self.meta = metadata

    def forward(self, batch):
        meta, outputs = self.meta, []
        by_name = {c.name: c for c in meta.categories}
        for image_id in batch["image_ids"]:
            pred = np.zeros(GT[image_id].shape, dtype=np.int32)
            sem = np.full(GT[image_id].shape, meta.sem_label(by_name["terrain"].id), dtype=np.int64)
            segments = []
            for k, (name, mask) in enumerate(_predictions(image_id), start=1):
                pred[mask] = k
                cat = by_name[name]
                label = meta.thing_label(cat.id) if cat.isthing else meta.sem_label(cat.id)
                sem[mask] = meta.sem_label(cat.id)
                segments.append({"id": k, "isthing": cat.isthing, "category": label, "score": 0.9})
            present = set(np.unique(pred).tolist())
            outputs.append({"panoptic": (torch.from_numpy(pred), [s for s in segments if s["id"] in present]),
                            "sem_seg": torch.from_numpy(sem)})
        return outputs


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_gt_fine(root, "val", GT)
    create_panoptic_imgs(root, "val")
    return root


def _official_pq(gt_json: Path, pred_json: Path) -> dict:
    """evalPanopticSemanticLabeling's numbers, with its per-image function run in this process (its
    evaluatePanoptic only adds a process pool and the image-id matching)."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
    stat = official.pq_compute_single_core(0, pairs, str(gt_json.with_suffix("")),
                                           str(pred_json.with_suffix("")), categories)
    return official.average_pq(stat, categories)


@pytest.mark.parametrize("use_train_id", [False, True])
def test_pq_equals_the_official_evaluator_class_by_class(cityscapes_root, tmp_path, use_train_id):
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    meta = ds.metadata
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)
    metrics = evaluate(ScriptedModel(meta), loader, meta, [PanopticQuality(meta), PanopticPNGWriter(meta, tmp_path)],
                       device=torch.device("cpu"), progress=False)["panoptic"]
    gt_json = cityscapes_root / "gtFine" / ("cityscapes_panoptic_val" + ("_trainId" if use_train_id else "") + ".json")
    ref = _official_pq(gt_json, tmp_path / "panoptic_pred.json")
    from_files = pq_compute(gt_json, tmp_path / "panoptic_pred.json", workers=1)

    for ours in (metrics, from_files):
        for split in ("All", "Things", "Stuff"):
            assert ours[split]["n"] == ref[split]["n"], split
            for key in ("pq", "sq", "rq"):
                assert ours[split][key] == pytest.approx(ref[split][key], abs=1e-12), (split, key)
        assert set(ours["per_class"]) == set(ref["per_class"])
        for cat, scores in ref["per_class"].items():
            for key in ("pq", "sq", "rq"):
                assert ours["per_class"][cat][key] == pytest.approx(scores[key], abs=1e-12), (cat, key)

    # each rule was met: the counts behind the equal numbers
    counts = {c.name: tuple(metrics["per_class"][c.id][k] for k in ("tp", "fp", "fn")) for c in meta.categories}
    assert counts["car"] == (1, 0, 1)           # A matched only with its void pixels left out; group ignored
    assert counts["truck"] == (0, 1, 0) and counts["building"] == (0, 0, 1)
    assert counts["person"] == (1, 0, 0)        # the rider on the person group is no person
    assert counts["rider"] == (0, 1, 0)         # on the caravan (void): ignored; on the person group: FP
    assert counts["bicycle"] == (0, 1, 0)       # exactly half void
    assert counts["bus"] == (0, 1, 1)           # IoU 0.5
    assert counts["train"] == (0, 0, 0) and counts["wall"] == (0, 1, 0)
    assert counts["sky"] == (2, 0, 0)
    assert (ref["All"]["n"], ref["Things"]["n"], ref["Stuff"]["n"]) == (13, 6, 7)


@pytest.mark.parametrize("use_train_id", [False, True])
def test_miou_equals_the_official_pixel_level_evaluator(cityscapes_root, tmp_path, monkeypatch, use_train_id):
    """The same predictions' semantic PNGs, scored by evalPixelLevelSemanticLabeling against the
    ``*_gtFine_labelIds.png``: its class IoUs and average equal our sem_seg IoU and mIoU (classes
    predicted without ground truth: 0; in neither: left out)."""
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    meta = ds.metadata
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)
    metrics = evaluate(ScriptedModel(meta), loader, meta, [SemanticSegmentation(meta), SemanticPNGWriter(meta, tmp_path)],
                       device=torch.device("cpu"), progress=False)["sem_seg"]
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pixel_eval

    args = pixel_eval.args
    for key, value in (("quiet", True), ("JSONOutput", False), ("evalInstLevelScore", False),
                       ("predictionPath", str(tmp_path)), ("predictionWalk", None)):
        monkeypatch.setattr(args, key, value)  # iIoU off: np.in1d, removed in numpy 2.4
    gts = sorted(str(p) for p in (cityscapes_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    ref = pixel_eval.evaluateImgLists([pixel_eval.getPrediction(args, gt) for gt in gts], gts, args)
    ours = dict(zip([c.name for c in meta.categories], metrics["IoU"]))
    scored = {name: iou for name, iou in ref["classScores"].items() if iou == iou}  # not nan
    assert set(scored) == {name for name, iou in ours.items() if iou == iou}
    for name, iou in scored.items():
        assert ours[name] == pytest.approx(iou, abs=1e-12), name
    assert metrics["mIoU"] == pytest.approx(ref["averageScoreClasses"], abs=1e-12)
    assert scored["wall"] == 0.0 and scored["building"] == 0.0  # predicted without ground truth; missed
    assert scored["train"] > 0 and "pole" not in scored  # the train group has its class; pole is in neither
