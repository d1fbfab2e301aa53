"""The evaluator protocol (reset / process / evaluate) of every built-in evaluator, PQ by segment
area against a brute-force count, and an evaluator added by config reaching eval_results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from config_helpers import compose_config
from noisy_model import NoisyGroundTruthModel
from panfpn.data.build import synthetic_dataset
from panfpn.data.collate import collate_panoptic
from panfpn.engine.eval_loop import evaluate
from panfpn.evaluation.accumulator import checked_pairs
from panfpn.evaluation.evaluator import eval_images
from panfpn.evaluation.evaluators import (COCOAP, Overlays, PanopticPNGWriter, PanopticQuality, ReportCollector,
                                          SemanticPNGWriter, SemanticSegmentation)
from panfpn.evaluation.pq_by_area import PQByArea, area_bucket
from panfpn.evaluation.pq_rules import pq_results, PQStat
from panfpn.utils.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four synthetic validation images as two batches of two, with the noisy model's outputs."""
    ds = synthetic_dataset("val", num_images=4, seed=11, height=96, width=128, is_train=False,
                           cache_dir=str(tmp_path_factory.mktemp("synthetic")))
    model = NoisyGroundTruthModel(ds.metadata)
    batches = []
    for batch in DataLoader(ds, batch_size=2, collate_fn=collate_panoptic):
        batches.append((batch, eval_images(batch, model(batch), ds.metadata)))
    return ds.metadata, batches


def _state(evaluator, results: dict, out_dir: Path) -> dict:
    """What an evaluator produced: its results plus its files or kept images (writers, report)."""
    state = {k: ([o.tolist() for o in v] if k == "overlays" else v) for k, v in results.items()}
    if isinstance(evaluator, ReportCollector):
        state["worst"] = [(s.image_id, s.pq, s.missed, s.false, s.wrong_class, s.overlay.tolist())
                          for s in evaluator.worst.worst()]
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    state["files"] = {str(p.relative_to(out_dir)): p.read_bytes() for p in files}
    return state


MAKERS = {
    "pq": lambda meta, out: PanopticQuality(meta),
    "sem_seg": lambda meta, out: SemanticSegmentation(meta),
    "coco_ap": lambda meta, out: COCOAP(meta),
    "pq_by_area": lambda meta, out: PQByArea(meta),
    "panoptic_png": lambda meta, out: PanopticPNGWriter(meta, out),
    "semantic_png": lambda meta, out: SemanticPNGWriter(meta, out),
    "overlays": lambda meta, out: Overlays(3),
    "report": lambda meta, out: ReportCollector(meta, out, k=2),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_two_batches_equal_one_pass_and_reset_forgets(data, tmp_path, name):
    metadata, batches = data
    # one pass over all four images as a single batch of EvalImages
    single = MAKERS[name](metadata, tmp_path / "single")
    single.reset()
    single.process(batches[0][0], [img for _, imgs in batches for img in imgs])
    expected = _state(single, single.evaluate(), tmp_path / "single")
    # two batches, after a batch that reset() must forget
    split = MAKERS[name](metadata, tmp_path / "split")
    split.process(*batches[1])
    split.reset()
    for batch, imgs in batches:
        split.process(batch, imgs)
    got = _state(split, split.evaluate(), tmp_path / "split")
    if name in ("panoptic_png", "semantic_png"):  # a file written before reset() is still on disk, rewritten
        assert len(got["files"]) == len(expected["files"]) > 0
    assert got == expected
    assert any(v not in ({}, [], None) for k, v in expected.items())  # something was produced


def test_eval_loop_merges_the_results_and_counts_images(data):
    metadata, batches = data
    loader = [b for b, _ in batches]
    metrics = evaluate(NoisyGroundTruthModel(metadata), loader, metadata, [PanopticQuality(metadata), PQByArea(metadata), Overlays(1)],
                       device=torch.device("cpu"), progress=False)
    assert list(metrics) == ["panoptic", "panoptic_by_area", "overlays", "num_images"]
    assert metrics["num_images"] == 4 and len(metrics["overlays"]) == 1
    with pytest.raises(ValueError, match="already returned"):
        evaluate(NoisyGroundTruthModel(metadata), loader, metadata, [PanopticQuality(metadata), PanopticQuality(metadata)],
                 device=torch.device("cpu"), progress=False)


# --- PQ by area against a brute-force count ---------------------------------------------------

CATS = {1: {"isthing": 1}, 2: {"isthing": 1}, 10: {"isthing": 0}}


def _boundary_image(rng: np.random.Generator, sizes: list[int]) -> tuple:
    """A 300 x 300 image whose ground-truth segments have exactly the given areas (a full-width
    band per segment, the last row partial), and a prediction that shifts, grows, drops, swaps
    and adds segments."""
    h, w = 300, 300
    gt = np.zeros((h, w), np.int32)
    flat = gt.reshape(-1)
    start, gt_segments = 0, []
    for k, area in enumerate(sizes):
        flat[start:start + area] = k + 1
        cat = [1, 2, 10][k % 3]
        gt_segments.append({"id": k + 1, "category_id": cat, "iscrowd": int(rng.random() < 0.1), "area": area})
        start += area + int(rng.integers(0, 300))  # void between segments
    pred = np.roll(gt, int(rng.integers(-40, 40)))
    pred_segments = []
    for seg in gt_segments:
        r = rng.random()
        if r < 0.15:
            pred[pred == seg["id"]] = 0
            continue
        cat = seg["category_id"] if r < 0.85 else [1, 2, 10][int(rng.integers(0, 3))]
        pred_segments.append({"id": seg["id"], "category_id": cat})
    extra = 100  # an unmatched prediction of its own size (a false positive unless on void)
    y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
    pred[y0:y0 + int(rng.integers(5, 40)), x0:x0 + int(rng.integers(5, 40))] = extra
    pred_segments.append({"id": extra, "category_id": int(rng.choice([1, 2, 10]))})
    present = set(np.unique(pred).tolist())
    pred_segments = [s for s in pred_segments if s["id"] in present]
    return gt, gt_segments, pred, pred_segments


def _brute_force(images) -> dict[str, dict[int, list]]:
    """Per bucket and category [tp, fp, fn, iou sum], from the masks themselves."""
    out = {b: {} for b in ("small", "medium", "large")}

    def add(bucket, cat, i, value):
        out[bucket].setdefault(cat, [0, 0, 0, 0.0])[i] += value

    for gt, gt_segs, pred, pred_segs in images:
        matched = set()
        for g in gt_segs:
            gm = gt == g["id"]
            hit = None
            for p in pred_segs:
                pm = pred == p["id"]
                inter = int((gm & pm).sum())
                union = int((gm | pm).sum()) - int((pm & (gt == 0)).sum())
                if g["iscrowd"] == 0 and p["category_id"] == g["category_id"] and inter / union > 0.5:
                    hit = (p["id"], inter / union)
            if g["iscrowd"]:
                continue
            if hit:
                matched.add(hit[0])
                add(area_bucket(g["area"]), g["category_id"], 0, 1)
                add(area_bucket(g["area"]), g["category_id"], 3, hit[1])
            else:
                add(area_bucket(g["area"]), g["category_id"], 2, 1)
        for p in pred_segs:
            pm = pred == p["id"]
            crowd = [g["id"] for g in gt_segs if g["iscrowd"] and g["category_id"] == p["category_id"]]
            ignored = int((pm & (gt == 0)).sum()) + (int((pm & (gt == crowd[-1])).sum()) if crowd else 0)
            if p["id"] not in matched and ignored / pm.sum() <= 0.5:
                add(area_bucket(int(pm.sum())), p["category_id"], 1, 1)
    return out


def test_pq_by_area_equals_a_brute_force_count_with_segments_on_the_boundaries():
    rng = np.random.default_rng(3)
    boundary = [1023, 1024, 1025, 9215, 9216, 9217]  # small | medium at 32², medium | large after 96²
    images = [_boundary_image(rng, boundary + [int(a) for a in rng.integers(50, 12000, 2)]) for _ in range(12)]
    assert [area_bucket(a) for a in boundary] == ["small", "medium", "medium", "medium", "medium", "large"]
    ev = PQByArea([{"id": c, **v} for c, v in CATS.items()])
    for k, (gt, gt_segs, pred, pred_segs) in enumerate(images):
        pairs = checked_pairs(torch.from_numpy(pred), torch.from_numpy(gt), k, gt_segs, pred_segs)
        ev.process({}, [SimpleNamespace(image_id=k, gt_segments=gt_segs, pred_segments=pred_segs, pairs=pairs)])
    got = ev.evaluate()["panoptic_by_area"]
    expected = _brute_force(images)
    for bucket, per_cat in expected.items():
        stat = PQStat(tp={c: v[0] for c, v in per_cat.items()}, fp={c: v[1] for c, v in per_cat.items()},
                      fn={c: v[2] for c, v in per_cat.items()}, iou={c: v[3] for c, v in per_cat.items()})
        want = pq_results(stat, CATS)
        for split in ("All", "Things", "Stuff"):
            assert got[bucket][split] == pytest.approx({**want[split]}, abs=1e-12), (bucket, split)
        assert [got[bucket][k] for k in ("tp", "fp", "fn")] == [sum(v[i] for v in per_cat.values()) for i in range(3)]
    assert all(got[b]["tp"] > 0 and got[b]["fn"] > 0 for b in ("small", "medium", "large"))
    assert got["small"]["fp"] > 0


def test_pq_by_area_buckets_add_up_to_the_pq_counts(data):
    metadata, batches = data
    pq, by_area = PanopticQuality(metadata), PQByArea(metadata)
    for batch, imgs in batches:
        pq.process(batch, imgs)
        by_area.process(batch, imgs)
    per_class = pq.evaluate()["panoptic"]["per_class"].values()
    buckets = by_area.evaluate()["panoptic_by_area"]
    for key in ("tp", "fp", "fn"):
        assert sum(buckets[b][key] for b in ("small", "medium", "large")) == sum(r[key] for r in per_class)


# --- an evaluator added by config --------------------------------------------------------------

def test_an_evaluator_added_by_config_reaches_eval_results_and_the_report(tmp_path):
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.modeling.build import build_model

    tiny = ["data.val.num_images=2", "data.val.height=64", "data.val.width=64", "data.num_workers=0",
            "model.merge.score_thresh=0.0", "model.merge.stuff_area=1"]
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(compose_config(tiny)).state_dict()}, weights)
    cfg = compose_config([*tiny, f"weights={weights}",
                          "eval.evaluators=[pq_by_area,{_target_:custom_evaluator.ThingCount,key:my_count}]"],
                         output_dir=tmp_path / "eval")
    metrics = evaluate_from_config(cfg)
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert saved["my_count"]["images"] == 2 and saved["my_count"] == metrics["my_count"]
    assert set(saved["panoptic_by_area"]) == {"small", "medium", "large", "thresholds"}
    assert {"panoptic", "sem_seg", "bbox", "segm", "num_images"} <= set(saved)
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert 'id="pq-by-area"' in page
    from report_parse import PageStructure

    context = dict(PageStructure(page).texts("context"))
    assert context["checkpoint"] == str(weights) and context["iteration"] == "-"  # a bare state dict
    assert re.search(r"\d+\.\d\d M parameters", context["model"]) and "score_thresh=0.0" in context["merge"]
    assert context["split"].startswith("val: 2 images") and context["dataset"] == "synthetic"


@pytest.mark.parametrize("entry, message", [
    ("[pq_by_size]", "unknown evaluator 'pq_by_size'"),
    ("[{_target_:custom_evaluator.NoSuchClass}]", "cannot build custom_evaluator.NoSuchClass"),
])
def test_a_bad_evaluator_entry_names_the_config_key(entry, message):
    from panfpn.data.synthetic import synthetic_metadata
    from panfpn.evaluation.build import build_evaluators

    cfg = compose_config([f"eval.evaluators={entry}"])
    with pytest.raises(ConfigError, match=r"eval\.evaluators\[0\].*" + message.replace(".", r"\.")):
        build_evaluators(cfg, synthetic_metadata())
