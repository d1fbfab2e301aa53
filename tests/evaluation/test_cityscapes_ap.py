"""cityscapes_ap gives the numbers of cityscapesScripts' own instance-level evaluator
(evalInstanceLevelSemanticLabeling): a tiny gtFine set in the official layout, its panoptic ground
truth made by the real createPanopticImgs, predictions that exercise each of the script's rules,
scored by our evaluator (which also writes the script's prediction files) and by the script on
those files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_metadata, coco_panoptic_metadata
from panfpn.data.collate import collate_panoptic
from panfpn.engine.eval_loop import evaluate
from panfpn.evaluation.build import configured_evaluators
from panfpn.evaluation.cityscapes_ap import CityscapesAP, Entries, average_precision
from panfpn.modeling.box_masks import BoxMasks
from panfpn.utils.errors import ConfigError

pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import create_panoptic_imgs, write_gt_fine  # noqa: E402

H, W = 40, 80
LABEL_ID = {"person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28, "train": 31}


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def frames() -> dict[str, tuple[np.ndarray, list[tuple[str, float, np.ndarray]]]]:
    """Per frame: ``*_gtFine_instanceIds.png`` content and the predictions (class, score, mask)."""
    out = {}
    # frame 0: duplicates, IoU exactly 0.5, a small instance, groups, void
    inst = np.full((H, W), 23, np.int32)                  # sky
    inst[20:] = 7                                          # road
    inst[2:14, 2:14] = 26000                               # car A, 144 px
    inst[2:12, 20:30] = 26001                              # car B, 100 px: counted (>= 100)
    inst[22:31, 2:11] = 26002                              # car, 81 px: too small to count
    inst[22:34, 20:32] = 26                                # car group, 144 px
    inst[2:22, 40:50] = 24000                              # person, 200 px
    inst[30:38, 40:48] = 27                                # truck group, 64 px (< 100: counted twice)
    inst[30:40, 60:80] = 1                                 # ego vehicle: void
    inst[0:2, 60:80] = 9                                   # parking: void
    car_a_shifted = box(3, 15, 2, 14)                      # IoU 132/156 with car A
    preds = [("car", 0.9, box(2, 14, 2, 14)),              # car A exactly
             ("car", 0.7, car_a_shifted),                  # duplicate of car A (lower score)
             ("car", 0.6, box(2, 12, 20, 25)),             # half of car B: IoU exactly 0.5
             ("car", 0.8, box(22, 31, 2, 11)),             # exactly the small car: never counted
             ("car", 0.4, box(22, 31, 2, 15)),             # the small car plus road: 81/117 ignored
             ("car", 0.85, box(22, 34, 20, 32)),           # exactly the car group
             ("car", 0.3, box(20, 34, 20, 32)),            # group 144 of 168 px
             ("car", 0.35, box(28, 40, 55, 80)),           # 200 of 300 px on ego vehicle (void)
             ("car", 0.2, np.zeros((H, W), bool)),         # empty: skipped
             ("person", 0.75, box(2, 17, 40, 50)),         # IoU exactly 0.75 (threshold 0.75000...02)
             ("truck", 0.5, box(30, 40, 40, 50)),          # truck group (64 px, counted twice) + road
             ("rider", 0.9, box(24, 30, 70, 78))]          # no rider anywhere: rider is undefined
    out["frankfurt_000000_000294"] = (inst, preds)
    # frame 1: ties in score across true and false positives, a bus without predictions
    inst = np.full((H, W), 7, np.int32)
    inst[2:17, 2:12] = 27000                               # truck, 150 px
    inst[2:14, 20:30] = 28000                              # bus, 120 px, never predicted
    inst[20:40, 2:12] = 24000                              # person, 200 px
    inst[20:30, 30:40] = 24001                             # person, 100 px, never found
    inst[20:30, 50:70] = 0                                 # unlabeled: void
    preds = [("truck", 0.5, box(2, 16, 2, 12)),            # IoU 140/150
             ("person", 0.5, box(20, 40, 2, 12)),          # exactly the person
             ("person", 0.5, box(0, 10, 60, 75)),          # on road: false positive, same score
             ("person", 0.6, box(18, 30, 45, 60)),         # 50 of 180 px on void
             ("car", 0.5, box(30, 38, 60, 78))]            # car false positive, score tied with TPs
    out["lindau_000001_000019"] = (inst, preds)
    # frame 2: a miss beside a misplaced prediction; BoxMasks masks
    inst = np.full((H, W), 7, np.int32)
    inst[5:25, 5:15] = 24000                               # person, 200 px
    inst[5:15, 40:60] = 26000                              # car, 200 px
    preds = [("person", 0.95, box(5, 22, 5, 15)),          # IoU 0.85
             ("car", 0.3, box(5, 15, 48, 68)),             # IoU 120/280: false positive + miss
             ("car", 0.65, box(5, 15, 41, 60))]            # IoU 0.95
    out["munster_000002_000019"] = (inst, preds)
    return out


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs_ap")
    write_gt_fine(root, "val", {name: inst for name, (inst, _) in frames().items()})
    create_panoptic_imgs(root, "val")
    return root


class FixedInstances(torch.nn.Module):
    """Outputs the instances of :func:`frames` for each image of the batch (masks as one tensor,
    or for the last frame as BoxMasks as the eval loop's merge keeps them)."""

    def __init__(self, metadata, preds=None):
        super().__init__()
        self.meta = metadata
        self.preds = preds if preds is not None else {k: p for k, (_, p) in frames().items()}

    def forward(self, batch):
        outputs = []
        for image_id in batch["image_ids"]:
            preds = self.preds[image_id]
            names = {c.id: c.name for c in self.meta.categories}
            thing = [names[i] for i in self.meta.thing_ids]
            masks = torch.from_numpy(np.stack([m for _, _, m in preds]))
            if image_id.startswith("munster"):
                crops, origins = [], []
                for m in masks:
                    ys, xs = torch.nonzero(m, as_tuple=True)
                    y0, x0 = int(ys.min()), int(xs.min())
                    crops.append(m[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1])
                    origins.append((y0, x0))
                masks = BoxMasks(tuple(crops), tuple(origins), (H, W))
            outputs.append({
                "panoptic": (torch.zeros((H, W), dtype=torch.int32), []),
                "instances": {"boxes": torch.zeros((len(preds), 4)),
                              "scores": torch.tensor([s for _, s, _ in preds], dtype=torch.float32),
                              "labels": torch.tensor([thing.index(n) for n, _, _ in preds]),
                              "masks": masks}})
        return outputs


def official_instance_ap(root: Path, results: Path, tmp_path: Path, monkeypatch) -> dict:
    """evalInstanceLevelSemanticLabeling on ``results`` through its Python API."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as inst_eval

    args = inst_eval.args
    for key, value in (("quiet", True), ("JSONOutput", False), ("predictionPath", str(results.resolve())),
                       ("predictionWalk", None), ("gtInstancesFile", str(tmp_path / "gtInstances.json"))):
        monkeypatch.setattr(args, key, value)
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # removed in numpy 2.4; the script calls it
    # its debug dump (matches.json) holds numpy 2's np.int64 pixel counts, which its JSON writer cannot encode
    monkeypatch.setattr(inst_eval, "writeDict2JSON", lambda d, path: Path(path).write_text(
        json.dumps(d, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)))
    monkeypatch.chdir(tmp_path)  # the script writes matches.json into the working directory
    gts = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_instanceIds.png"))
    preds = [inst_eval.getPrediction(gt, args) for gt in gts]
    return inst_eval.evaluateImgLists(preds, gts, args)["averages"]


@pytest.mark.parametrize("use_train_id", [False, True])
def test_native_ap_equals_the_official_script(cityscapes_root, tmp_path, monkeypatch, use_train_id):
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)
    results = tmp_path / "results"
    metrics = evaluate(FixedInstances(ds.metadata), loader, ds.metadata, [CityscapesAP(ds.metadata, results)],
                       device=torch.device("cpu"), progress=False)["cityscapes_ap"]
    lines = (results / "lindau_000001_000019_pred.txt").read_text().splitlines()
    assert lines[0] == "masks/lindau_000001_000019_0.png 27 0.5"  # label id (truck), also with train ids
    official = official_instance_ap(cityscapes_root, results, tmp_path, monkeypatch)

    assert metrics["AP"] == pytest.approx(official["allAp"], abs=1e-9)
    assert metrics["AP50"] == pytest.approx(official["allAp50%"], abs=1e-9)
    assert metrics["void_from"] == "instanceIds" and metrics["images_void_from_panoptic"] == 0
    names = {c.id: c.name for c in ds.metadata.categories}
    assert {names[c] for c in metrics["per_class"]} == set(official["classes"])
    for cat, ours in metrics["per_class"].items():
        theirs = official["classes"][names[cat]]
        if math.isnan(theirs["ap"]):
            assert ours is None, names[cat]
        else:
            assert ours["AP"] == pytest.approx(theirs["ap"], abs=1e-9), names[cat]
            assert ours["AP50"] == pytest.approx(theirs["ap50%"], abs=1e-9), names[cat]
    # the cases are not trivial: classes undefined (rider: predictions only; train...: nothing),
    # zero (bus: never predicted), between 0 and 1, and AP differs from AP50
    by_name = {names[c]: r for c, r in metrics["per_class"].items()}
    assert by_name["rider"] is None and by_name["train"] is None
    assert by_name["bus"] == {"name": "bus", "AP": 0.0, "AP50": 0.0}
    assert 0 < by_name["car"]["AP"] < by_name["car"]["AP50"] < 1
    assert 0 < by_name["person"]["AP"] < 1 and 0 < by_name["truck"]["AP"] < 1
    assert 0 < metrics["AP"] < metrics["AP50"] < 1


def test_the_cases_sit_on_the_rules_edges(cityscapes_root):
    """The comparison above decides each rule: moved by one pixel or one float step, the 100-pixel
    limit and the strict overlap test change the result, and the small truck group's pixels count
    twice (counted once, the truck prediction on it would be a false positive at 0.95)."""
    from panfpn.evaluation import cityscapes_ap as cs

    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", is_train=False)
    model = FixedInstances(ds.metadata)

    def run() -> dict:
        loader = DataLoader(ds, batch_size=3, collate_fn=collate_panoptic)
        return evaluate(model, loader, ds.metadata, [CityscapesAP(ds.metadata)], device=torch.device("cpu"),
                        progress=False)["cityscapes_ap"]

    base = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cs, "MIN_REGION_SIZE", 101)  # car B (exactly 100 px) no longer counted
        assert run()["per_class"][26] != base["per_class"][26]
    with pytest.MonkeyPatch.context() as mp:  # thresholds one float step lower: IoU 0.5 matches
        mp.setattr(cs, "OVERLAPS", np.nextafter(cs.OVERLAPS, 0))
        assert run()["per_class"][26]["AP50"] > base["per_class"][26]["AP50"]

    sample = ds[0]
    assert sample["image_id"] == "frankfurt_000000_000294"
    preds = frames()["frankfurt_000000_000294"][1]
    classes = cs.cityscapes_classes(ds.metadata)
    truck = cs.image_classes(sample["gt_panoptic"], sample["segments_info"], [LABEL_ID.get(n, 0) for n, _, _ in preds],
                             [s for _, s, _ in preds], np.stack([m for _, _, m in preds]), classes)[3]
    assert truck.gt_area == [64] and truck.gt_group == [True] and truck.pred_area == [100]
    entries = Entries()
    cs.score_class(truck, 0.95, entries)
    assert entries.scores == [] and entries.missed == 0  # ignored: 2 * 64 / 100 > 0.95


def test_no_entry_at_all_scores_zero():
    """Ground truth and predictions, but every instance missed and every prediction ignored: the
    official script raises IndexError there; the class scores 0."""
    assert average_precision(Entries([], [], missed=3)) == 0.0
    # one threshold (precision 0.5, recall 1) and the last point (precision 1, recall 0) get half of
    # the recall range each: 0.5 * 0.5 + 1 * 0.5 (the script's step widths, not COCO's envelope)
    assert average_precision(Entries([0.5, 0.5], [True, False], missed=0)) == 0.75


def test_cityscapes_ap_is_a_named_evaluator():
    """Unknown on the previous code ('unknown evaluator')."""
    [evaluator] = configured_evaluators(OmegaConf.create(["cityscapes_ap"]), cityscapes_panoptic_metadata())
    assert isinstance(evaluator, CityscapesAP)
    [evaluator] = configured_evaluators(["cityscapes_ap"], cityscapes_panoptic_metadata(use_train_id=True))
    assert evaluator.category_ids == [11, 12, 13, 14, 15, 16, 17, 18]


def test_refused_on_a_dataset_without_the_cityscapes_instance_classes():
    with pytest.raises(ConfigError, match=r"eval\.evaluators.*cityscapes_ap.*coco_panoptic"):
        configured_evaluators(["cityscapes_ap"], coco_panoptic_metadata())


@pytest.mark.parametrize("experiment", ["cityscapes_r50", "cityscapes_mask2former_r50",
                                        "cityscapes_mask2former_swin_t"])
def test_on_by_default_in_the_cityscapes_presets_only(experiment):
    from config_helpers import compose_config

    assert "cityscapes_ap" in compose_config([f"experiment={experiment}"]).eval.evaluators
    assert "cityscapes_ap" not in compose_config(["experiment=coco_r50_1x"]).eval.evaluators


def test_save_predictions_writes_the_official_files(cityscapes_root, tmp_path):
    """eval.save_predictions with cityscapes_ap: predictions/cityscapes_instances/ holds the
    script's files (one text file per image, mask PNGs 0/255)."""
    from config_helpers import compose_config
    from PIL import Image

    from panfpn.evaluation.build import build_evaluators

    cfg = compose_config(["experiment=cityscapes_r50", "eval.save_predictions=true", "eval.report=false"])
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", is_train=False)
    evaluators = build_evaluators(cfg, ds.metadata, tmp_path)
    [cs] = [e for e in evaluators if isinstance(e, CityscapesAP)]
    assert cs.write_dir == tmp_path / "predictions" / "cityscapes_instances"
    evaluate(FixedInstances(ds.metadata), DataLoader(ds, batch_size=2, collate_fn=collate_panoptic), ds.metadata,
             [cs], device=torch.device("cpu"), progress=False)
    out = tmp_path / "predictions" / "cityscapes_instances"
    assert sorted(p.name for p in out.glob("*.txt")) == [f"{f}_pred.txt" for f in sorted(frames())]
    first = (out / "frankfurt_000000_000294_pred.txt").read_text().splitlines()[0].split(" ")
    assert first == ["masks/frankfurt_000000_000294_0.png", "26", repr(float(np.float32(0.9)))]
    mask = np.asarray(Image.open(out / first[0]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, frames()["frankfurt_000000_000294"][1][0][2])


def test_printed_and_logged_in_percent():
    from panfpn.engine.eval_loop import format_results, metrics_to_scalars

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    metrics = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
               "sem_seg": {"mIoU": 0.5},
               "cityscapes_ap": {"AP": 0.25, "AP50": 0.5, "per_class": {24: {"name": "person", "AP": 0.25,
                                                                             "AP50": 0.5}}}}
    scalars = metrics_to_scalars(metrics)
    assert scalars["cityscapes_ap/AP"] == 25.0 and scalars["cityscapes_ap/AP50"] == 50.0
    assert "Cityscapes instance AP AP 25.00  AP50 50.00" in format_results(metrics)
    metrics["cityscapes_ap"] = {"AP": None, "AP50": None, "per_class": {}}  # no class with ground truth
    assert "cityscapes_ap/AP" not in metrics_to_scalars(metrics)
    assert "Cityscapes instance AP AP n/a  AP50 n/a" in format_results(metrics)


def test_shown_in_report_html():
    from report_parse import PageStructure

    from panfpn.evaluation.report import build_report

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    metrics = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
               "sem_seg": {"mIoU": 0.5}, "cityscapes_ap": {"AP": 0.25, "AP50": None, "per_class": {}}}
    other = dict(PageStructure(build_report(metrics, {})).texts("other-metrics"))
    assert other["Cityscapes AP"] == "25.00" and other["Cityscapes AP50"] == "n/a"


@pytest.mark.parametrize("objective,scores,percent", [
    ("cityscapes_ap/AP50", {"cityscapes_ap": {"AP": 0.25, "AP50": 0.375, "per_class": {}}}, 37.5),
    ("cityscapes_sem_seg/iIoU", {"cityscapes_sem_seg": {"IoU": 0.5, "iIoU": 0.25, "IoU_sup": 0.75,
                                                         "iIoU_sup": float("nan")}}, 25.0)])
def test_a_training_objective_when_configured(objective, scores, percent):
    # Both Cityscapes evaluators' scores are objectives, refused at start without their evaluator.
    from config_helpers import compose_config

    from panfpn.engine.training.job import check_objective, objective_value

    evaluator = objective.split("/")[0]
    with pytest.raises(ConfigError, match=f"eval.evaluators has no {evaluator}"):
        check_objective(compose_config([f"train.objective={objective}"]))
    cfg = compose_config(["experiment=cityscapes_r50", f"train.objective={objective}"])
    assert check_objective(cfg) is None
    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625}
    result = {"eval": {"panoptic": {"All": split, "Things": split, "Stuff": split}, "sem_seg": {"mIoU": 0.5},
                       **scores}}
    assert objective_value(cfg, result) == percent


def test_ranks_gather_to_the_single_process_result(cityscapes_root, monkeypatch):
    """Images split over two ranks: evaluate() gathers both ranks' entries (all_gather_objects)
    and gives the one-process numbers."""
    from panfpn.evaluation import cityscapes_ap as cs

    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", is_train=False)
    preds = frames()
    whole, rank0, rank1 = (CityscapesAP(ds.metadata) for _ in range(3))
    for i in range(len(ds)):
        sample = ds[i]
        p = preds[sample["image_id"]][1]
        args = (sample["gt_panoptic"], sample["segments_info"], [LABEL_ID[n] for n, _, _ in p],
                [float(np.float32(s)) for _, s, _ in p], np.stack([m for _, _, m in p]))
        whole.add_image(*args)
        (rank0 if i == 0 else rank1).add_image(*args)
    expected = whole.evaluate()
    monkeypatch.setattr(cs, "is_multiprocess", lambda: True)
    monkeypatch.setattr(cs, "all_gather_objects", lambda own: [own, rank1.local_state()])
    assert rank0.evaluate() == expected
    assert expected["cityscapes_ap"]["void_from"] == "panoptic"  # add_image without the official void
    assert expected["cityscapes_ap"]["images_void_from_panoptic"] == 3


def _eval_frames(root: Path, gt: dict[str, np.ndarray], preds: dict[str, list], *,
                 drop_instance_ids: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """Our result on the frames ``gt`` (instanceIds content) with ``preds`` (class, score, mask),
    evaluated one image per batch from the dataset (which gives the image paths), and the folder
    of the written prediction files. ``drop_instance_ids``: frames whose instanceIds PNG is deleted
    after createPanopticImgs ran."""
    write_gt_fine(root, "val", gt)
    create_panoptic_imgs(root, "val")
    for frame in drop_instance_ids:
        (root / "gtFine" / "val" / frame.split("_")[0] / f"{frame}_gtFine_instanceIds.png").unlink()
    ds = cityscapes_panoptic_dataset(root, "val", is_train=False)
    results = root / "results"
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_panoptic)
    metrics = evaluate(FixedInstances(ds.metadata, preds), loader, ds.metadata, [CityscapesAP(ds.metadata, results)],
                       device=torch.device("cpu"), progress=False)
    return metrics["cityscapes_ap"], results


CARAVAN_FRAME = "frankfurt_000000_000294"


def caravan_frame() -> tuple[np.ndarray, list]:
    """A car, a caravan and a trailer instance (ignored classes with instances), a caravan group
    (void for the script too); car predictions on each."""
    inst = np.full((H, W), 7, np.int32)
    inst[2:14, 2:14] = 26000                   # car
    inst[20:32, 40:60] = 29000                 # caravan instance: not void for the script
    inst[2:12, 60:76] = 30001                  # trailer instance: not void for the script
    inst[30:40, 2:12] = 29                     # caravan group: void
    preds = [("car", 0.9, box(2, 14, 2, 14)),          # the car
             ("car", 0.95, box(20, 32, 40, 60)),       # on the caravan: a false positive for the script
             ("car", 0.8, box(2, 12, 60, 76)),         # on the trailer: a false positive for the script
             ("car", 0.85, box(30, 40, 2, 12))]        # on the caravan group: ignored by both
    return inst, preds


def test_caravan_and_trailer_instances_are_not_void(tmp_path, monkeypatch):
    """With the instanceIds PNGs beside the images (the download's layout) void is the script's:
    car predictions on a caravan and a trailer instance are false positives, as for the script
    (the panoptic files alone make them void: the previous code gave car AP 1.0 here)."""
    inst, preds = caravan_frame()
    ours, results = _eval_frames(tmp_path, {CARAVAN_FRAME: inst}, {CARAVAN_FRAME: preds})
    official = official_instance_ap(tmp_path, results, tmp_path, monkeypatch)
    assert official["classes"]["car"]["ap"] < 0.5
    assert ours["per_class"][26]["AP"] == pytest.approx(official["classes"]["car"]["ap"], abs=1e-9)
    assert ours["per_class"][26]["AP50"] == pytest.approx(official["classes"]["car"]["ap50%"], abs=1e-9)
    assert ours["AP"] == pytest.approx(official["allAp"], abs=1e-9)
    assert ours["void_from"] == "instanceIds" and ours["images_void_from_panoptic"] == 0


def test_without_instance_ids_void_comes_from_the_panoptic_files(tmp_path, caplog):
    """No instanceIds PNG for one of two frames: that frame's void is the panoptic files' (the
    predictions on the caravan and the trailer are ignored), the result says so ("mixed", 1 image)
    and one warning per evaluation names the missing file."""
    inst, preds = caravan_frame()
    other = "lindau_000001_000019"
    other_inst = np.full((H, W), 7, np.int32)
    other_inst[5:25, 5:15] = 24000             # person, found exactly
    gt, all_preds = {CARAVAN_FRAME: inst, other: other_inst}, {CARAVAN_FRAME: preds,
                                                               other: [("person", 0.9, box(5, 25, 5, 15))]}
    with caplog.at_level("WARNING", logger="panfpn.evaluation.cityscapes_ap"):
        ours, _ = _eval_frames(tmp_path, gt, all_preds, drop_instance_ids=(CARAVAN_FRAME,))
    assert ours["per_class"][26]["AP"] == 1.0  # the car found, every other car prediction ignored
    assert ours["void_from"] == "mixed" and ours["images_void_from_panoptic"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "panfpn.evaluation.cityscapes_ap"]
    missing = tmp_path / "gtFine" / "val" / "frankfurt" / f"{CARAVAN_FRAME}_gtFine_instanceIds.png"
    assert len(warnings) == 1 and "1 of 2 images" in warnings[0] and str(missing) in warnings[0]

    caplog.clear()
    with caplog.at_level("WARNING", logger="panfpn.evaluation.cityscapes_ap"):
        ours, _ = _eval_frames(tmp_path / "none", {CARAVAN_FRAME: inst}, {CARAVAN_FRAME: preds},
                               drop_instance_ids=(CARAVAN_FRAME,))
    assert ours["void_from"] == "panoptic" and ours["images_void_from_panoptic"] == 1
    assert len([r for r in caplog.records if r.name == "panfpn.evaluation.cityscapes_ap"]) == 1


def test_an_instance_ids_png_of_another_size_is_an_error_naming_it(tmp_path):
    from PIL import Image

    inst, preds = caravan_frame()
    write_gt_fine(tmp_path, "val", {CARAVAN_FRAME: inst})
    create_panoptic_imgs(tmp_path, "val")
    png = tmp_path / "gtFine" / "val" / "frankfurt" / f"{CARAVAN_FRAME}_gtFine_instanceIds.png"
    Image.fromarray(np.full((H, W + 1), 7, np.uint16)).save(png)
    ds = cityscapes_panoptic_dataset(tmp_path, "val", is_train=False)
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_panoptic)
    with pytest.raises(ValueError, match=rf"instanceIds PNG {png} is {H}x{W + 1} but the panoptic ground truth "
                                         rf"of image id '{CARAVAN_FRAME}' is {H}x{W}"):
        evaluate(FixedInstances(ds.metadata, {CARAVAN_FRAME: preds}), loader, ds.metadata,
                 [CityscapesAP(ds.metadata)], device=torch.device("cpu"), progress=False)


def test_instance_ids_are_read_exactly(tmp_path, monkeypatch):
    """Every 16-bit value comes back as it is, by Wuffs (when installed) and by Pillow; the void
    ids are labels.py's ignoreInEval ids; a colour PNG is refused naming the file."""
    from cityscapesscripts.helpers.labels import labels
    from PIL import Image

    from panfpn.data import wuffs_png
    from panfpn.evaluation import cityscapes_void as cv

    assert set(cv.VOID_LABEL_IDS) == {lb.id for lb in labels if lb.ignoreInEval and lb.id >= 0}
    values = np.random.default_rng(0).integers(0, 1 << 16, (37, 53)).astype(np.uint16)
    values[0, :3] = (0, 65535, 29000)
    Image.fromarray(values).save(tmp_path / "ids.png")
    readers = [True, False] if wuffs_png.available() else [False]
    for use_wuffs in readers:
        monkeypatch.setattr(wuffs_png, "available", lambda use=use_wuffs: use)
        got = cv.read_instance_ids(tmp_path / "ids.png")
        assert np.array_equal(got.astype(np.int64), values.astype(np.int64)), use_wuffs
        void = cv.official_void(tmp_path / "ids.png", values.shape, "x")
        assert np.array_equal(void, np.isin(values, [lb.id for lb in labels if lb.ignoreInEval]))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=rf"instanceIds PNG {tmp_path / 'rgb.png'} is PNG mode RGB"):
        cv.read_instance_ids(tmp_path / "rgb.png")
    image = tmp_path / "cs" / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png"
    assert cv.instance_ids_path(image) == (tmp_path / "cs" / "gtFine" / "val" / "lindau" /
                                           "lindau_000001_000019_gtFine_instanceIds.png")
    assert cv.instance_ids_path(tmp_path / "lindau_000001_000019_leftImg8bit.png") is None
    assert cv.instance_ids_path(None) is None


def test_a_damaged_instance_ids_png_is_an_error_not_other_void(tmp_path):
    """Wuffs skips PNG checksums: a flipped bit in the image data must stop the run naming the file
    (as Pillow and the official script's reader do), not give other void pixels."""
    from PIL import Image

    from panfpn.data import wuffs_png
    from panfpn.data.image_io import ImageReadError
    from panfpn.evaluation import cityscapes_void as cv
    from panfpn.utils.png import png_chunks

    if not wuffs_png.available():
        pytest.skip("pywuffs is not installed: Pillow, which checks the checksums, reads the file")

    values = np.full((40, 60), 26000, np.uint16)
    values[:, :30] = 7
    Image.fromarray(values).save(tmp_path / "ids.png")
    data = (tmp_path / "ids.png").read_bytes()
    pos = next(p for p, kind, _ in png_chunks(data) if kind == b"IDAT")
    damaged = None
    for offset in range(8, 60):  # a flipped bit in the zlib stream that Wuffs decodes to other values
        candidate = bytearray(data)
        candidate[pos + offset] ^= 0x01
        try:
            silently_other = not np.array_equal(wuffs_png.decode_plain_grey16(bytes(candidate)), values)
        except ValueError:
            continue
        if silently_other:
            damaged = bytes(candidate)
            break
    assert damaged is not None, "no silently-wrong flip found: the case this test is for"
    (tmp_path / "ids.png").write_bytes(damaged)
    with pytest.raises(ImageReadError, match=r"ids\.png.*checksum"):
        cv.read_instance_ids(tmp_path / "ids.png")


def test_a_class_without_any_scored_entry_scores_zero(tmp_path, monkeypatch):
    """docs/cityscapes.md: a class with ground truth and predictions but no scored entry stops the
    script (IndexError) and scores 0 here."""
    inst = np.full((H, W), 7, np.int32)
    inst[2:14, 2:14] = 26000                   # car, never found
    inst[20:32, 40:60] = 1                     # ego vehicle: void
    ours, results = _eval_frames(tmp_path, {CARAVAN_FRAME: inst}, {CARAVAN_FRAME: [("car", 0.9, box(20, 32, 40, 60))]})
    with pytest.raises(IndexError):
        official_instance_ap(tmp_path, results, tmp_path, monkeypatch)
    assert ours["per_class"][26] == {"name": "car", "AP": 0.0, "AP50": 0.0}


def test_a_bad_instance_ids_png_is_a_tools_input_error(tmp_path):
    """tools/eval.py on a gtFine/<split>/<city>/*_gtFine_instanceIds.png that is not a PNG, not
    greyscale or of another size: one line naming it, exit 2 (before: a plain ValueError, hydra's
    traceback and exit 1, as for a bug)."""
    from PIL import Image

    from panfpn.engine.tool_errors import input_error
    from panfpn.evaluation import cityscapes_void as cv

    (tmp_path / "text.png").write_text("not a png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 5), np.uint16)).save(tmp_path / "wide.png")
    for name, read in (("text.png", cv.read_instance_ids), ("rgb.png", cv.read_instance_ids),
                       ("wide.png", lambda p: cv.official_void(p, (4, 4), CARAVAN_FRAME))):
        with pytest.raises(ValueError) as err:
            read(tmp_path / name)
        assert input_error(err.value) is err.value, name
        assert str(tmp_path / name) in str(err.value)
