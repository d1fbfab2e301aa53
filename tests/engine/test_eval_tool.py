"""tools/eval.py's function: metrics, eval_results.json, prediction files that pq_compute accepts."""

import json

import pytest
from PIL import Image
from hydra.utils import instantiate

from panfpn.engine.eval_run import evaluate_from_config
from panfpn.evaluation import pq_compute


def test_eval_writes_results_and_predictions_consistent_with_pq_compute(tiny_cfg, tiny_weights, tmp_path):
    weights = tiny_weights
    merge_overrides = ["model.merge.score_thresh=0.0", "model.merge.stuff_area=1"]  # many segments
    cfg = tiny_cfg(f"weights={weights}", "eval.save_predictions=true", "eval.max_images=null", "eval.save_overlays=2",
                   *merge_overrides, run_dir=tmp_path / "eval")
    metrics = evaluate_from_config(cfg, overrides=merge_overrides)  # as on the command line: they win
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert saved["panoptic"]["All"]["pq"] == pytest.approx(metrics["panoptic"]["All"]["pq"])
    assert {"sem_seg", "bbox", "segm", "num_images"} <= set(saved) and saved["num_images"] == 3
    overlays = sorted((tmp_path / "eval" / "overlays").iterdir())
    assert [p.name for p in overlays] == ["0000.png", "0001.png"]
    with Image.open(overlays[0]) as im:  # ground truth | prediction, side by side, 64x64 images
        assert im.width > 2 * 64 and im.height >= 64

    # The written prediction files, evaluated from disk against the dataset's own ground truth,
    # give exactly what the in-memory accumulator gave.
    val = instantiate(cfg.data.val)
    from_files = pq_compute(str(val.json_file), str(tmp_path / "eval" / "predictions" / "panoptic_pred.json"),
                            gt_folder=str(val.panoptic_root),
                            pred_folder=str(tmp_path / "eval" / "predictions" / "panoptic_pred"))
    for split in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            assert from_files[split][key] == pytest.approx(metrics["panoptic"][split][key], abs=1e-12)


def test_eval_without_weights_names_the_key(tiny_cfg):
    from panfpn.engine.config import ConfigError

    with pytest.raises(ConfigError, match="weights"):
        evaluate_from_config(tiny_cfg())


def test_eval_encodes_instance_masks_one_at_a_time_with_the_same_ap(tiny_cfg, tiny_weights, tmp_path, monkeypatch):
    """Eval keeps instance masks inside their boxes and makes each full-size mask only when COCO AP
    encodes it (a 24 MP image with 100 instances held 2.3 GiB of dense masks): the detections AP
    sees (RLEs included) are exactly those of the dense path, and no dense [K, H, W] stack is built."""
    import contextlib

    from panfpn.engine import eval_loop
    from panfpn.evaluation import coco_ap
    from panfpn.modeling.merge import BoxMasks

    overrides = ["model.merge.score_thresh=0.0", "model.roi_heads.box_head.test.score_thresh=0.0"]
    cfg = tiny_cfg(f"weights={tiny_weights}", "eval.max_images=null", *overrides,
                   run_dir=tmp_path / "eval")
    seen: list[list[dict]] = []
    original = coco_ap.detections_of_image
    monkeypatch.setattr(coco_ap, "detections_of_image", lambda *a: seen.append(original(*a)) or seen[-1])

    def detections(box_masks: bool) -> tuple[list, dict]:
        seen.clear()
        with monkeypatch.context() as m:
            if box_masks:
                m.setattr(BoxMasks, "dense", lambda *a, **k: pytest.fail("dense [K, H, W] masks built"))
            else:  # the old path: the model returns the dense stack
                m.setattr(eval_loop, "box_instance_masks", contextlib.nullcontext)
            metrics = evaluate_from_config(cfg, overrides=overrides)
        return [d for dets in seen for d in dets], metrics

    boxed, boxed_metrics = detections(True)
    dense, dense_metrics = detections(False)
    assert len(boxed) >= 30 and all("segmentation" in d for d in boxed)
    assert boxed == dense and boxed_metrics["segm"] == dense_metrics["segm"]


def test_an_evaluation_failing_part_way_leaves_no_partial_prediction_set(tiny_cfg, tmp_path, monkeypatch):
    # Before: the PNGs of the images done before the error stayed in predictions/panoptic_pred/ and
    # semantic/ (cleared of an earlier evaluation's at the start), and an official script globbing
    # those folders scored the partial set as the whole.
    import torch

    from panfpn.data.bad_images import BadImageError
    from panfpn.data.build import synthetic_dataset
    from panfpn.modeling.build import build_model

    monkeypatch.setenv("PANFPN_CACHE", str(tmp_path / "cache"))  # a private val set, free to corrupt
    val = synthetic_dataset("val", num_images=4, seed=1, height=64, width=64, is_train=False)
    bad = val.image_root / val.records[2].file_name
    bad.write_bytes(bad.read_bytes()[:200])  # the third image is truncated
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"  # random weights: the files are what is tested
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    run = tmp_path / "eval"
    earlier = run / "predictions" / "panoptic_pred" / "000099.png"  # an earlier evaluation's: removed at start
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier")
    (run / "predictions" / "panoptic_pred.json").write_text("{}")  # lists those PNGs: removed with them
    cfg = tiny_cfg(f"weights={weights}", "data.val.num_images=4", "eval.max_images=null", "eval.save_predictions=true",
                   "eval.save_semantic=true", "eval.compute_ap=false", "eval.report=false", run_dir=run)
    written = []
    from panfpn.evaluation import writer

    add = writer.PanopticPredictionWriter.add
    monkeypatch.setattr(writer.PanopticPredictionWriter, "add",
                        lambda self, *a, **k: (add(self, *a, **k), written.append(a[0]))[0])
    with pytest.raises(BadImageError, match=bad.name):
        evaluate_from_config(cfg)
    assert written == [1, 2]  # two images were done (and their files written) before the error
    assert [p for folder in ("predictions", "semantic") for p in (run / folder).rglob("*") if p.is_file()] == []
    assert not (run / "eval_results.json").exists()
    log = (run / "log.txt").read_text()  # the run's log (stderr's handler may be an earlier test's)
    removed = [line for line in log.splitlines() if "this evaluation had written" in line]
    assert len(removed) == 2, log
    assert all("it failed (BadImageError) before every image was scored" in m for m in removed)
    assert any(f"2 prediction file(s) this evaluation had written for {run / 'predictions' / 'panoptic_pred'}" in m
               for m in removed)
    assert any(f"for {run / 'semantic'} (in {run / '.partial_predictions' / 'semantic'}" in m for m in removed)
    assert not (run / ".partial_predictions").exists()  # the folders it was filling are gone with their files
