"""``cityscapes_sem_seg`` gives the IoU, iIoU, IoU_sup and iIoU_sup (averages, per class, per category)
of cityscapesScripts' own evalPixelLevelSemanticLabeling, run on a gtFine set in the official layout
whose panoptic ground truth the official createPanopticImgs made."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import DataLoader

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_categories, cityscapes_panoptic_metadata, coco_panoptic_metadata
from panfpn.data.collate import collate_panoptic
from panfpn.data.metadata import DatasetMetadata
from panfpn.engine.eval_loop import evaluate
from panfpn.evaluation.build import configured_evaluators
from panfpn.evaluation.cityscapes_pixel import CityscapesPixelScores
from panfpn.utils.errors import ConfigError

pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import create_panoptic_imgs, write_gt_fine  # noqa: E402
from cityscapes_pixel_ranks import feed, random_image, rank_main  # noqa: E402

H, W = 40, 80
LABEL_TO_TRAIN = {c["id"]: t["id"] for c, t in zip(cityscapes_panoptic_categories(False),
                                                   cityscapes_panoptic_categories(True))}
TRAIN_TO_LABEL = {t: label for label, t in LABEL_TO_TRAIN.items()}
TRAIN, WALL, MOTORCYCLE, TRUCK = 16, 3, 17, 14  # train ids


def frame_a() -> np.ndarray:
    """Cars, persons, a rider and a bicycle of several sizes, a person group (crowd), a caravan
    (instances of a label ignored in evaluation) and ignored stuff (ego vehicle, static, parking)."""
    m = np.full((H, W), 23, dtype=np.uint16)  # sky
    m[H // 2:] = 7                             # road
    m[2:14, 0:20] = 11                         # building
    m[20:32, 2:26] = 26000                     # large car
    m[22:25, 30:33] = 26001                    # small car
    m[24:30, 36:44] = 26002                    # medium car
    m[10:20, 46:50] = 24000                    # person
    m[12:14, 52:54] = 24001                    # tiny person
    m[6:16, 56:66] = 24                        # person group (crowd)
    m[20:30, 50:56] = 25000                    # rider
    m[30:36, 58:66] = 33000                    # bicycle
    m[14:22, 68:78] = 29000                    # caravan: ignored -> void
    m[36:, 70:] = 1                            # ego vehicle: ignored
    m[0:2, 30:40] = 4                          # static: ignored
    m[34:38, 0:10] = 9                         # parking: ignored
    return m


def frame_b() -> np.ndarray:
    """A truck, a bus and a car (no train, wall or motorcycle in either frame), sidewalk, vegetation."""
    m = np.full((H, W), 21, dtype=np.uint16)  # vegetation
    m[H // 2:] = 8                             # sidewalk
    m[18:34, 4:30] = 27000                     # truck
    m[10:30, 34:60] = 28000                    # bus
    m[26:30, 64:70] = 26000                    # car
    m[0:4, 0:80] = 0                           # unlabeled: ignored
    return m


FRAMES = {"frankfurt_000000_000294": frame_a(), "lindau_000001_000019": frame_b()}


def predictions() -> dict[str, np.ndarray]:
    """Train-id predictions: the ground truth with 30 % of the pixels (and every ignored one) set to
    random classes other than train and wall (absent from prediction and ground truth: NaN), motorcycle
    included (absent from the ground truth: false positives only), the small car called a truck and the
    rider half a person (right category, wrong class)."""
    rng = np.random.default_rng(0)
    noise_classes = np.array([t for t in range(19) if t not in (TRAIN, WALL)])
    out = {}
    for frame, inst in FRAMES.items():
        label = np.where(inst >= 1000, inst // 1000, inst)
        gt = np.vectorize(lambda v: LABEL_TO_TRAIN.get(int(v), 255))(label)
        noise = rng.choice(noise_classes, size=gt.shape)
        pred = np.where((rng.random(gt.shape) < 0.3) | (gt == 255), noise, gt)
        pred[inst == 26001] = TRUCK
        pred[20:25, 50:56][inst[20:25, 50:56] == 25000] = LABEL_TO_TRAIN[24]
        out[frame] = pred.astype(np.int64)
    return out


@pytest.fixture(scope="module")
def cityscapes_set(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cityscapes")
    write_gt_fine(root, "val", FRAMES)
    create_panoptic_imgs(root, "val")
    return root, predictions()


class FixedPrediction(torch.nn.Module):
    """The model of the eval loop: each image's semantic argmax is the prepared one (no segments)."""

    def __init__(self, preds: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.preds = preds

    def forward(self, batch):
        return [{"panoptic": (torch.zeros((H, W), dtype=torch.int32), []),
                 "sem_seg": torch.from_numpy(self.preds[image_id])} for image_id in batch["image_ids"]]


def official_scores(root: Path, preds: dict[str, np.ndarray], out: Path, monkeypatch) -> dict:
    """cityscapesScripts' pixel-level evaluation (iIoU on) of the label-id PNGs of ``preds``."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pixel_eval

    out.mkdir()
    to_label = np.vectorize(TRAIN_TO_LABEL.get)
    for frame, pred in preds.items():
        Image.fromarray(to_label(pred).astype(np.uint8)).save(out / f"{frame}_pred.png")
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # removed in numpy 2.4; the script calls it
    for key, value in (("quiet", True), ("JSONOutput", False), ("evalInstLevelScore", True)):
        monkeypatch.setattr(pixel_eval.args, key, value)
    gts = [str(next((root / "gtFine" / "val").glob(f"*/{frame}_gtFine_labelIds.png"))) for frame in preds]
    return pixel_eval.evaluateImgLists([str(out / f"{frame}_pred.png") for frame in preds], gts, pixel_eval.args)


def same(ours: float, official: float) -> bool:
    return (math.isnan(ours) and math.isnan(official)) or abs(ours - official) <= 1e-9


@pytest.mark.parametrize("use_train_id", [False, True])
def test_scores_equal_the_official_script(cityscapes_set, tmp_path, monkeypatch, use_train_id):
    root, preds = cityscapes_set
    ds = cityscapes_panoptic_dataset(root, "val", use_train_id=use_train_id, is_train=False)
    evaluators = configured_evaluators(["cityscapes_sem_seg"], ds.metadata)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)
    ours = evaluate(FixedPrediction(preds), loader, ds.metadata, evaluators, device=torch.device("cpu"),
                    progress=False)["cityscapes_sem_seg"]
    official = official_scores(root, preds, tmp_path / "results", monkeypatch)

    averages = {"IoU": "averageScoreClasses", "iIoU": "averageScoreInstClasses",
                "IoU_sup": "averageScoreCategories", "iIoU_sup": "averageScoreInstCategories"}
    for key, name in averages.items():
        assert same(ours[key], official[name]), (key, ours[key], official[name])
    assert 0.2 < ours["iIoU"] < 0.9 and ours["iIoU"] != pytest.approx(ours["IoU"])  # neither trivial nor IoU
    for name, scores in ours["per_class"].items():
        assert same(scores["IoU"], official["classScores"][name]), name
        assert same(scores.get("iIoU", math.nan), official["classInstScores"][name]), name
    for category, scores in ours["per_category"].items():
        assert same(scores["IoU"], official["categoryScores"][category]), category
        assert same(scores.get("iIoU", math.nan), official["categoryInstScores"][category]), category
    assert set(ours["per_category"]) == {c for c in official["categoryScores"] if c != "void"}
    assert math.isnan(official["categoryScores"]["void"])
    # the cases the set was made for
    assert math.isnan(ours["per_class"]["train"]["iIoU"]) and math.isnan(ours["per_class"]["wall"]["IoU"])
    assert ours["per_class"]["motorcycle"]["iIoU"] == 0.0  # false positives only
    assert set(k for k, v in ours["per_category"].items() if "iIoU" in v) == {"human", "vehicle"}


def test_iiou_weighs_instances_by_the_official_average_sizes():
    """One image, two cars (100 and 4 pixels), the small one missed: iIoU counts it as much as the
    large one (weights 12794.02 / 100 and / 4), IoU hardly sees it."""
    meta = cityscapes_panoptic_metadata()
    car = meta.sem_label(26)
    road = meta.sem_label(7)
    gt_map = torch.full((20, 20), 7, dtype=torch.int32)
    gt_map[0:10, 0:10] = 26000
    gt_map[15:17, 15:17] = 26001
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0}, {"id": 26000, "category_id": 26, "iscrowd": 0},
                {"id": 26001, "category_id": 26, "iscrowd": 0}]
    pred = torch.full((20, 20), road)
    pred[0:10, 0:10] = car
    from panfpn.evaluation.evaluator import EvalImage

    batch = {"image_ids": ["x"], "file_names": ["x.png"], "gt_panoptic": [gt_map], "segments_info": [segments]}
    img = EvalImage(batch, 0, {"panoptic": (torch.zeros((20, 20), dtype=torch.int32), []), "sem_seg": pred}, meta)
    (evaluator,) = configured_evaluators(["cityscapes_sem_seg"], meta)
    evaluator.process(batch, [img])
    car_scores = evaluator.evaluate()["cityscapes_sem_seg"]["per_class"]["car"]
    assert car_scores["IoU"] == pytest.approx(100 / 104)
    size = 12794.0202738185
    assert car_scores["iIoU"] == pytest.approx((100 * size / 100) / (100 * size / 100 + 4 * size / 4))


def test_the_image_confusion_is_counted_once_for_sem_seg_and_cityscapes_sem_seg(monkeypatch):
    # Both score the semantic argmax: one pass over the image's pixels (EvalImage.sem_confusion), not
    # one each (~0.2 s per 2048x1024 image each on a 2-core machine); same numbers as sem_seg alone.
    from panfpn.evaluation import evaluator as evaluator_module
    from panfpn.evaluation.evaluator import EvalImage
    from panfpn.evaluation.evaluators import SemanticSegmentation

    meta = cityscapes_panoptic_metadata()
    gt_map = torch.full((8, 8), 7, dtype=torch.int32)
    gt_map[:4] = 26000
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0}, {"id": 26000, "category_id": 26, "iscrowd": 0}]
    pred = torch.full((8, 8), meta.sem_label(7))
    pred[:2] = meta.sem_label(26)
    batch = {"image_ids": ["x"], "file_names": ["x.png"], "gt_panoptic": [gt_map], "segments_info": [segments]}
    img = EvalImage(batch, 0, {"panoptic": (torch.zeros((8, 8), dtype=torch.int32), []), "sem_seg": pred}, meta)
    calls = []
    counting = evaluator_module.confusion_counts
    monkeypatch.setattr(evaluator_module, "confusion_counts", lambda *a: calls.append(1) or counting(*a))
    sem_seg, (cityscapes,) = SemanticSegmentation(meta), configured_evaluators(["cityscapes_sem_seg"], meta)
    sem_seg.process(batch, [img])
    cityscapes.process(batch, [img])
    assert len(calls) == 1
    car = meta.sem_label(26)
    assert sem_seg.evaluate()["sem_seg"]["IoU"][car] == pytest.approx(16 / 32)
    assert cityscapes.evaluate()["cityscapes_sem_seg"]["per_class"]["car"]["IoU"] == pytest.approx(16 / 32)


def test_the_segment_positions_are_computed_once_for_cityscapes_ap_and_cityscapes_sem_seg(monkeypatch):
    # Both count pixels per ground-truth segment: one mapping of the gt map to segment positions per
    # image (EvalImage.gt_positions), not one each; the numbers are those of each evaluator alone.
    from panfpn.evaluation import evaluator as evaluator_module
    from panfpn.evaluation.evaluator import EvalImage

    meta = cityscapes_panoptic_metadata()
    gt_map = torch.full((40, 40), 7, dtype=torch.int32)
    gt_map[0:20, 0:20] = 26000  # a car, half found
    gt_map[24:36, 24:36] = 24000  # a person, found
    gt_map[0:2, 30:40] = 0  # void
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0}, {"id": 26000, "category_id": 26, "iscrowd": 0},
                {"id": 24000, "category_id": 24, "iscrowd": 0}]
    pred = torch.full((40, 40), meta.sem_label(7))
    pred[0:10, 0:20] = meta.sem_label(26)
    pred[24:36, 24:36] = meta.sem_label(24)
    masks = torch.zeros((2, 40, 40), dtype=torch.bool)
    masks[0, 0:10, 0:20] = True
    masks[1, 24:36, 24:36] = True
    instances = {"labels": torch.tensor([meta.thing_ids.index(26), meta.thing_ids.index(24)]),
                 "scores": torch.tensor([0.9, 0.8]), "masks": masks}
    batch = {"image_ids": ["x"], "file_names": ["x.png"], "gt_panoptic": [gt_map], "segments_info": [segments]}

    def image() -> EvalImage:
        return EvalImage(batch, 0, {"panoptic": (torch.zeros((40, 40), dtype=torch.int32), []), "sem_seg": pred,
                                    "instances": instances}, meta)

    alone = {}
    for name in ("cityscapes_ap", "cityscapes_sem_seg"):
        (evaluator,) = configured_evaluators([name], meta)
        evaluator.process(batch, [image()])
        alone.update(evaluator.evaluate())
    calls = []
    mapping = evaluator_module.segment_positions
    monkeypatch.setattr(evaluator_module, "segment_positions", lambda *a: calls.append(1) or mapping(*a))
    both = configured_evaluators(["cityscapes_ap", "cityscapes_sem_seg"], meta)
    img = image()
    for evaluator in both:
        evaluator.process(batch, [img])
    assert len(calls) == 1
    assert {k: v for e in both for k, v in e.evaluate().items()} == alone
    car = alone["cityscapes_sem_seg"]["per_class"]["car"]
    assert car["IoU"] == pytest.approx(50 / 100) and car["iIoU"] == pytest.approx(50 / 100)
    assert alone["cityscapes_ap"]["per_class"][24]["AP"] == 1.0  # the person matched (IoU 1)
    assert alone["cityscapes_ap"]["per_class"][26]["AP50"] == 0.0  # the car at IoU 0.5 exactly: not > 0.5


@pytest.mark.parametrize("metadata", [coco_panoptic_metadata(), DatasetMetadata.from_coco_categories(
    [{"id": 7, "name": "road", "isthing": 0}, {"id": 26, "name": "car", "isthing": 1}], sem_seg_mode="all",
    name="two_classes")])
def test_other_datasets_are_refused_naming_the_config_key(metadata):
    with pytest.raises(ConfigError, match=r"eval\.evaluators.*cityscapes_sem_seg") as err:
        configured_evaluators(["cityscapes_sem_seg"], metadata)
    assert "\n" not in str(err.value) and repr(metadata.name) in str(err.value)


def test_on_by_default_for_cityscapes_only(compose_cfg):
    for experiment in ("cityscapes_r50", "cityscapes_mask2former_r50", "cityscapes_mask2former_swin_t"):
        assert "cityscapes_sem_seg" in compose_cfg([f"experiment={experiment}"]).eval.evaluators, experiment
    for experiment in ("coco_r50_1x", "synthetic_cpu"):
        assert "cityscapes_sem_seg" not in compose_cfg([f"experiment={experiment}"]).eval.evaluators, experiment


def test_tables_and_scalars_show_the_four_scores_in_percent():
    from panfpn.engine.eval_loop import format_results, metrics_to_scalars

    split = {"pq": 0.5, "sq": 0.7, "rq": 0.6, "n": 1}
    metrics = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
               "sem_seg": {"mIoU": 0.5},
               "cityscapes_sem_seg": {"IoU": 0.5, "iIoU": 0.25, "IoU_sup": 0.75, "iIoU_sup": float("nan")}}
    assert "Cityscapes  IoU 50.00  iIoU 25.00  IoU_sup 75.00  iIoU_sup n/a" in format_results(metrics).splitlines()
    scalars = metrics_to_scalars(metrics)
    assert scalars["cityscapes_sem_seg/iIoU"] == 25.0 and "cityscapes_sem_seg/iIoU_sup" not in scalars
    metrics["cityscapes_sem_seg"]["iIoU_sup"] = None  # as eval_results.json holds a NaN
    assert "iIoU_sup n/a" in format_results(metrics)


def test_every_results_line_and_the_report_say_n_a_for_an_undefined_score():
    # One rule (panfpn.utils.percent) for the printed lines and the report; before, the printed
    # Cityscapes instance AP line showed "nan" where the report and the pixel-level line showed "n/a".
    from report_parse import PageStructure

    from panfpn.engine.eval_loop import format_results
    from panfpn.evaluation.report import build_report

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    metrics = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
               "sem_seg": {"mIoU": 0.5}, "cityscapes_ap": {"AP": float("nan"), "AP50": 0.5, "per_class": {}},
               "cityscapes_sem_seg": {"IoU": 0.5, "iIoU": float("nan"), "IoU_sup": None, "iIoU_sup": 0.125}}
    lines = format_results(metrics).splitlines()
    assert "Cityscapes instance AP AP n/a  AP50 50.00" in lines  # before: "AP nan"
    assert "Cityscapes  IoU 50.00  iIoU n/a  IoU_sup n/a  iIoU_sup 12.50" in lines
    other = dict(PageStructure(build_report(metrics, {})).texts("other-metrics"))
    assert other["Cityscapes AP"] == "n/a" and other["Cityscapes AP50"] == "50.00"
    assert other["Cityscapes iIoU"] == "n/a" and other["Cityscapes iIoU_sup"] == "12.50"


def test_ranks_reduce_to_the_single_process_scores(tmp_path):
    rng = np.random.default_rng(3)
    images = [random_image(rng) for _ in range(8)]
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), images, str(tmp_path)), nprocs=2)
    single = CityscapesPixelScores(cityscapes_panoptic_metadata())
    feed(single, images)
    expected = single.compute()
    assert 0 < expected["iIoU"] < 1
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert flat(got).keys() == flat(expected).keys()
        assert all(same(v, flat(expected)[k]) for k, v in flat(got).items()), rank


def flat(tree: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested result dict by their /-joined key path."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {prefix + key: value})
    return out



def test_shown_in_report_html():
    from report_parse import PageStructure

    from panfpn.evaluation.report import build_report

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    metrics = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
               "sem_seg": {"mIoU": 0.5},
               "cityscapes_sem_seg": {"IoU": 0.5, "iIoU": 0.25, "IoU_sup": 0.75, "iIoU_sup": None}}
    other = dict(PageStructure(build_report(metrics, {})).texts("other-metrics"))
    assert (other["Cityscapes IoU"], other["Cityscapes iIoU"], other["Cityscapes IoU_sup"],
            other["Cityscapes iIoU_sup"]) == ("50.00", "25.00", "75.00", "n/a")
    metrics["cityscapes_sem_seg"]["iIoU_sup"] = float("nan")  # as the in-memory result holds it
    assert dict(PageStructure(build_report(metrics, {})).texts("other-metrics"))["Cityscapes iIoU_sup"] == "n/a"
