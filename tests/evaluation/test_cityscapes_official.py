"""Our prediction files are scored by cityscapesscripts' own evaluators on a tiny Cityscapes-layout
set built with the real createPanopticImgs, and give the numbers our evaluators give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_metadata
from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import list_image_files
from panfpn.engine.eval_loop import evaluate
from panfpn.engine.predict_run import predict_images
from panfpn.evaluation import pq_compute
from panfpn.evaluation.evaluators import PanopticPNGWriter, PanopticQuality, SemanticPNGWriter, SemanticSegmentation

csp = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import write_cityscapes_root  # noqa: E402

FRAMES = ("frankfurt_000000_000294", "lindau_000001_000019", "munster_000002_000019")


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    return write_cityscapes_root(tmp_path_factory.mktemp("cityscapes"), FRAMES)


class NoisyGroundTruthModel(torch.nn.Module):
    """Semantic labels = the batch's ground truth with 30 % of the pixels (and all ignored ones)
    replaced by random labels; panoptic = road and sky stuff plus one car (score 0.8)."""

    def __init__(self, metadata):
        super().__init__()
        self.meta = metadata
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, batch):
        meta, outputs = self.meta, []
        for i, (h, w) in enumerate(batch["orig_sizes"]):
            gt = batch["sem_seg"][i, :h, :w] if "sem_seg" in batch else torch.full((h, w), 255)
            noise = torch.randint(0, meta.num_sem_classes, (h, w), generator=self.gen)
            flip = torch.rand((h, w), generator=self.gen) < 0.3
            sem = torch.where(flip | (gt == 255), noise, gt)
            id_map = torch.full((h, w), 2, dtype=torch.int32)
            id_map[: h // 2] = 3
            id_map[18:28, 5:20] = 1
            car = meta.thing_ids.index(next(c.id for c in meta.categories if c.name == "car"))
            road = meta.sem_label(next(c.id for c in meta.categories if c.name == "road"))
            sky = meta.sem_label(next(c.id for c in meta.categories if c.name == "sky"))
            segments = [{"id": 1, "isthing": True, "category": car, "score": 0.8, "area": 0},
                        {"id": 2, "isthing": False, "category": road, "score": None, "area": 0},
                        {"id": 3, "isthing": False, "category": sky, "score": None, "area": 0}]
            outputs.append({"panoptic": (id_map, segments), "sem_seg": sem})
        return outputs


@pytest.mark.parametrize("use_train_id", [False, True])
def test_semantic_pngs_score_the_same_miou_in_cityscapesscripts(cityscapes_root, tmp_path, monkeypatch,
                                                                 use_train_id):
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_panoptic)
    evaluators = [PanopticQuality(ds.metadata), SemanticSegmentation(ds.metadata),
                  SemanticPNGWriter(ds.metadata, tmp_path / "results"), PanopticPNGWriter(ds.metadata, tmp_path / "pan")]
    metrics = evaluate(NoisyGroundTruthModel(ds.metadata), loader, ds.metadata, evaluators,
                       device=torch.device("cpu"), progress=False)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{f}.png" for f in FRAMES]
    # eval's prediction JSON carries the thing scores
    anns = json.loads((tmp_path / "pan" / "panoptic_pred.json").read_text())["annotations"]
    assert all(s["score"] == pytest.approx(0.8) for a in anns for s in a["segments_info"] if s["id"] == 1)

    monkeypatch.setenv("CITYSCAPES_DATASET", str(cityscapes_root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(tmp_path / "results"))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pixel_eval

    args = pixel_eval.args
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "JSONOutput", False)
    # iIoU is not compared (we report IoU only), and its code calls np.in1d, removed in numpy 2.4
    monkeypatch.setattr(args, "evalInstLevelScore", False)
    monkeypatch.setattr(args, "predictionPath", str(tmp_path / "results"))
    monkeypatch.setattr(args, "predictionWalk", None)
    gts = sorted(str(p) for p in (cityscapes_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    preds = [pixel_eval.getPrediction(args, gt) for gt in gts]
    official = pixel_eval.evaluateImgLists(preds, gts, args)
    assert official["averageScoreClasses"] == pytest.approx(metrics["sem_seg"]["mIoU"], abs=1e-12)
    assert 0.1 < metrics["sem_seg"]["mIoU"] < 0.95  # neither trivial nor perfect
    ours = dict(zip([c.name for c in ds.metadata.categories], metrics["sem_seg"]["IoU"]))
    scored = {name: iou for name, iou in official["classScores"].items() if iou == iou}  # not nan
    assert set(scored) <= set(ours) and len(scored) >= 10
    for name, iou in scored.items():
        assert iou == pytest.approx(ours[name], abs=1e-12), name


def test_predict_cityscapes_ids_are_scored_by_cityscapesscripts(cityscapes_root, tmp_path):
    """predict used to name images by file stem (…_leftImg8bit): no match in createPanopticImgs' GT."""
    meta = cityscapes_panoptic_metadata()
    out = tmp_path / "pred"
    paths = list_image_files(cityscapes_root / "leftImg8bit" / "val", recursive=True)
    predict_images(NoisyGroundTruthModel(meta), paths, meta, out, progress=False, overlay=False,
                   semantic=True)
    data = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in data["annotations"]] == list(FRAMES)
    assert sorted(p.name for p in (out / "semantic").iterdir()) == [f"{f}_leftImg8bit.png" for f in FRAMES]

    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    gt_json = cityscapes_root / "gtFine" / "cityscapes_panoptic_val.json"
    official = evaluatePanoptic(str(gt_json), str(cityscapes_root / "gtFine" / "cityscapes_panoptic_val"),
                                str(out / "panoptic.json"), str(out / "panoptic"), str(tmp_path / "r.json"))
    ours = pq_compute(gt_json, out / "panoptic.json", workers=1)
    assert 0 < ours["All"]["pq"] < 1
    for split in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert official[split][key] == pytest.approx(ours[split][key], abs=1e-12), (split, key)


def eval_config(root: Path, out: Path):
    """tools/eval.py's config for ``root`` (experiment=cityscapes_r50 with the small model, 32 px test size)."""
    from config_helpers import compose_config

    def cfg(*extra, weights="null"):
        return compose_config(["experiment=cityscapes_r50", "model=panoptic_fpn_small", f"data.root={root}",
                               f"weights={weights}",
                               "data.val.transforms.short_edge_lengths=[32]", "data.val.transforms.max_size=64",
                               "data.num_workers=0", "eval.report=false", "model.merge.score_thresh=0.0", *extra],
                              output_dir=out)
    return cfg


def random_small_model(folder: Path) -> Path:
    """A checkpoint of the small Panoptic FPN with Cityscapes' classes, randomly initialised."""
    from config_helpers import compose_config

    from panfpn.modeling.build import build_model

    torch.manual_seed(0)
    weights = folder / "model.pth"
    torch.save({"model": build_model(compose_config(["experiment=cityscapes_r50", "model=panoptic_fpn_small",
                                                     "weights=null"])).state_dict()}, weights)
    return weights


def test_an_earlier_evaluations_files_are_not_left_for_the_official_scripts(cityscapes_root, tmp_path):
    """tools/eval.py twice into one run folder (docs/cityscapes.md's hydra.run.dir=runs/cs_eval), the
    second on fewer images: the scripts glob the folders, so the first run's semantic PNGs and
    instance files of the other frames were scored as the second's predictions."""
    from panfpn.engine.eval_run import evaluate_from_config

    cfg = eval_config(cityscapes_root, tmp_path / "cs_eval")
    weights = random_small_model(tmp_path)
    saving = ["eval.save_predictions=true", "eval.save_semantic=true"]
    evaluate_from_config(cfg(*saving, weights=weights))
    out = tmp_path / "cs_eval"
    assert sorted(p.name for p in (out / "semantic").iterdir()) == [f"{f}.png" for f in FRAMES]
    assert sorted(p.name for p in (out / "predictions" / "cityscapes_instances").glob("*.txt")) == \
        [f"{f}_pred.txt" for f in FRAMES]
    evaluate_from_config(cfg(*saving, "eval.max_images=1", weights=weights))
    first = FRAMES[0]
    assert [p.name for p in (out / "semantic").iterdir()] == [f"{first}.png"]
    instances = out / "predictions" / "cityscapes_instances"
    assert [p.name for p in instances.glob("*.txt")] == [f"{first}_pred.txt"]
    assert all(p.name.startswith(f"{first}_") for p in (instances / "masks").iterdir())
    assert [p.name for p in (out / "predictions" / "panoptic_pred").iterdir()] == [f"{first}.png"]


def test_an_evaluation_failing_part_way_leaves_none_of_its_files_for_the_official_scripts(tmp_path):
    """The third frame's image is truncated: before, the semantic PNGs, the instance-level files and
    the panoptic PNGs of the first two stayed, and the scripts (globbing the folders) scored them as
    the whole split."""
    from panfpn.data.bad_images import BadImageError
    from panfpn.engine.eval_run import evaluate_from_config

    root = write_cityscapes_root(tmp_path / "cityscapes", FRAMES)
    bad = next((root / "leftImg8bit").rglob(f"{FRAMES[2]}_leftImg8bit.png"))
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "cs_eval"
    cfg = eval_config(root, out)("eval.save_predictions=true", "eval.save_semantic=true",
                                 weights=random_small_model(tmp_path))
    with pytest.raises(BadImageError, match=bad.name):
        evaluate_from_config(cfg)
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["log.txt"]  # the run's log alone
    log = (out / "log.txt").read_text()  # the run's log (stderr's handler may be an earlier test's)
    for folder in ("semantic", "predictions/cityscapes_instances", "predictions/panoptic_pred"):
        assert (f"prediction file(s) this evaluation had written for {out / folder} (in "
                f"{out / '.partial_predictions' / folder}, where it is filled until every image is scored): it failed "
                "(BadImageError)") in log, log
    assert "removed the 2 prediction file(s) this evaluation had written for " + str(out / "semantic") in log


def test_folders_this_evaluation_does_not_write_are_kept_with_a_warning(tmp_path, caplog):
    from panfpn.evaluation.earlier_outputs import remove_earlier_predictions

    (tmp_path / "semantic").mkdir()
    (tmp_path / "semantic" / f"{FRAMES[0]}.png").write_bytes(b"")
    masks = tmp_path / "predictions" / "cityscapes_instances" / "masks"
    masks.mkdir(parents=True)
    (masks / f"{FRAMES[0]}_0.png").write_bytes(b"")
    (masks.parent / f"{FRAMES[0]}_pred.txt").write_text("")
    (masks.parent / "notes.md").write_text("mine")  # not a kind the writers write: kept
    with caplog.at_level("WARNING", logger="panfpn.evaluation.earlier_outputs"):
        assert remove_earlier_predictions(tmp_path, save_predictions=True, save_semantic=False) == 2
    assert sorted(p.name for p in masks.parent.rglob("*")) == ["masks", "notes.md"]
    assert (tmp_path / "semantic" / f"{FRAMES[0]}.png").exists()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"removed 2 file(s) of an earlier evaluation from {masks.parent}",
        f"{tmp_path / 'semantic'} holds 1 file(s) of an earlier evaluation, not written by this one"]


def test_the_test_split_gives_the_test_servers_files(tmp_path):
    """docs/cityscapes.md's test-server recipe: gtFine/test (no labels: all void) converted by
    createPanopticImgs, tools/eval.py with data.val.split=test writes every frame's instance-level
    text file, panoptic PNG and label-id semantic PNG (its scores have no ground truth: null)."""
    import numpy as np
    from PIL import Image

    from cityscapes_layout import H, W, create_panoptic_imgs, write_gt_fine
    from panfpn.engine.eval_run import evaluate_from_config

    frames = ("berlin_000000_000019", "bielefeld_000000_000321")
    root = tmp_path / "cs"
    write_gt_fine(root, "test", {f: np.zeros((H, W), np.uint16) for f in frames})
    create_panoptic_imgs(root, "test")
    cfg = eval_config(root, tmp_path / "cs_test")
    metrics = evaluate_from_config(cfg("data.val.split=test", "eval.save_predictions=true", "eval.save_semantic=true",
                                       weights=random_small_model(tmp_path)))
    out = tmp_path / "cs_test"
    assert metrics["cityscapes_ap"]["AP"] is None and metrics["panoptic"]["All"]["n"] == 0
    assert sorted(p.name for p in (out / "predictions" / "cityscapes_instances").glob("*.txt")) == \
        [f"{f}_pred.txt" for f in frames]
    assert sorted(p.name for p in (out / "predictions" / "panoptic_pred").iterdir()) == [f"{f}.png" for f in frames]
    labels = {c.id for c in cityscapes_panoptic_metadata().categories}
    for f in frames:
        png = np.array(Image.open(out / "semantic" / f"{f}.png"))
        assert png.shape == (H, W) and set(np.unique(png).tolist()) <= labels
