"""tools/eval.py's function: metrics, eval_results.json, prediction files that pq_compute accepts."""

import json

import pytest
from PIL import Image
from hydra.utils import instantiate

from panfpn.engine.eval_run import evaluate_from_config
from panfpn.engine.train_run import train_from_config
from panfpn.evaluation import pq_compute


def test_eval_writes_results_and_predictions_consistent_with_pq_compute(tiny_cfg, tmp_path):
    train_from_config(tiny_cfg("train.eval_period=-1", run_dir=tmp_path / "train"))
    weights = tmp_path / "train" / "model_final.pth"
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
