"""tools/eval.py's files: eval.save_semantic writes label PNGs named by image id that give back the
reported mIoU; eval.save_predictions' JSON carries thing scores and one PNG per image id."""

from __future__ import annotations

import json

import numpy as np
import torch
from hydra.utils import instantiate
from config_helpers import compose_config
from PIL import Image

from panfpn.data.targets import semantic_map
from panfpn.engine.eval_run import evaluate_from_config
from panfpn.engine.job_setup import build_metadata
from panfpn.evaluation import SemSegEvaluator
from panfpn.evaluation.writer import prediction_file_stem
from panfpn.modeling.build import build_model

TINY = ["data.val.num_images=3", "data.val.height=64", "data.val.width=64", "data.num_workers=0",
        "eval.max_images=null", "eval.compute_ap=false", "model.merge.score_thresh=0.0",
        "model.merge.stuff_area=1"]


def _cfg(tmp_path, *extra):
    return compose_config([*TINY, *extra], output_dir=tmp_path / "eval")


def test_eval_writes_semantic_pngs_and_scored_predictions(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(_cfg(tmp_path)).state_dict()}, weights)
    cfg = _cfg(tmp_path, f"weights={weights}", "eval.save_predictions=true", "eval.save_semantic=true")
    metrics = evaluate_from_config(cfg)
    meta = build_metadata(cfg)
    val = instantiate(cfg.data.val)
    out = tmp_path / "eval"

    # semantic PNGs: one per image id, pixel = category id (0 for the merged 'thing' label)
    to_label = {cat: label for label, cat in enumerate(meta.sem_label_to_category) if cat is not None}
    to_label[0] = meta.sem_label_to_category.index(None)
    lut = np.full(256, 255, np.int64)
    for cat, label in to_label.items():
        lut[cat] = label
    sem = SemSegEvaluator(meta.num_sem_classes)
    names = []
    for k in range(len(val)):
        sample = val[k]
        name = f"{prediction_file_stem(sample['image_id'])}.png"
        names.append(name)
        png = np.array(Image.open(out / "semantic" / name))
        assert png.dtype == np.uint8 and png.shape == tuple(sample["gt_panoptic"].shape)
        assert set(np.unique(png).tolist()) <= set(to_label)
        gt = semantic_map(sample["gt_panoptic"], sample["segments_info"], meta)
        sem.update(torch.from_numpy(lut[png]), gt)
    assert sorted(p.name for p in (out / "semantic").iterdir()) == sorted(names)
    assert sem.compute()["mIoU"] == metrics["sem_seg"]["mIoU"]  # the PNGs are what was scored

    data = json.loads((out / "predictions" / "panoptic_pred.json").read_text())
    assert sorted(a["file_name"] for a in data["annotations"]) == sorted(names)
    things = [s for a in data["annotations"] for s in a["segments_info"] if meta.category(s["category_id"]).isthing]
    assert things and all(0.0 <= s["score"] <= 1.0 for s in things)
