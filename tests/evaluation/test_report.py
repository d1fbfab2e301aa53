"""report.html and compare.html: per-image PQ and errors of the worst images, page structure, no network."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from panfpn.evaluation.accumulator import PQAccumulator, pair_counts_torch
from panfpn.evaluation.report import build_report
from panfpn.evaluation.worst_images import WorstImages, score_image

from process_helpers import run as run_in_group
from fake_results import fake_metrics
from report_parse import PageStructure

CATS = [{"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 2, "name": "car", "isthing": 1, "color": [0, 0, 142]},
        {"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
        {"id": 9, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
        {"id": 11, "name": "bus", "isthing": 1, "color": [0, 60, 100]}]
CATEGORIES = {c["id"]: c for c in CATS}
NAMES = {c["id"]: c["name"] for c in CATS}
REPO = Path(__file__).resolve().parents[2]


def _image_with_errors():
    """GT: person (id 1), car (id 2), road (id 3), sky (id 4) in four 8x8 quadrants of 16x16.
    Prediction: person right, the car quadrant called person (wrong class), road missed (void),
    sky right but for a 2x2 false car in its corner."""
    gt = np.zeros((16, 16), np.int64)
    gt[:8, :8], gt[:8, 8:], gt[8:, :8], gt[8:, 8:] = 1, 2, 3, 4
    gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0},
               {"id": 3, "category_id": 7, "iscrowd": 0}, {"id": 4, "category_id": 9, "iscrowd": 0}]
    pred = np.zeros((16, 16), np.int64)
    pred[:8, :8], pred[:8, 8:], pred[8:, 8:] = 11, 12, 14
    pred[14:, 14:] = 15  # a 2x2 false car on sky: sky keeps IoU 60/64 > 0.5
    pred_segs = [{"id": 11, "category_id": 1}, {"id": 12, "category_id": 1},
                 {"id": 14, "category_id": 9}, {"id": 15, "category_id": 2}]
    return torch.from_numpy(gt), gt_segs, torch.from_numpy(pred), pred_segs


def test_per_image_pq_follows_the_dataset_rules_and_names_the_errors():
    gt, gt_segs, pred, pred_segs = _image_with_errors()
    score = score_image("img", gt_segs, pred_segs, pair_counts_torch(gt, pred), CATEGORIES)
    acc = PQAccumulator(CATS)  # the dataset PQ of a one-image dataset is the per-image PQ
    acc.update(pred, pred_segs, gt, gt_segs, image_id="img")
    assert score.pq == pytest.approx(acc.compute()["All"]["pq"], abs=1e-12)
    # person: TP 1 (IoU 1) + FP 1 (the car region) -> PQ 1/1.5; car: FN 1 + FP 1 -> 0; road: FN -> 0;
    # sky: TP (60/64) -> 60/64
    assert score.pq == pytest.approx((1 / 1.5 + 0 + 0 + 60 / 64) / 4)
    assert score.missed == {2: 1, 7: 1}
    assert score.false == {1: 1, 2: 1}
    assert score.wrong_class == [(2, 1)]  # GT car predicted as person


def test_worst_images_keeps_the_k_lowest_and_draws_only_those():
    gt, gt_segs, pred, pred_segs = _image_with_errors()
    perfect = (gt, gt_segs, gt, [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs])
    bad = (gt, gt_segs, pred, pred_segs)
    worst = WorstImages(CATEGORIES, k=2)
    drawn = []
    for i, (g, gs, p, ps) in enumerate([perfect, bad, perfect, bad, perfect]):
        worst(i, p, ps, g, gs, lambda i=i: drawn.append(i) or np.full((4, 4, 3), i, np.uint8))
    kept = worst.worst()
    assert [s.image_id for s in kept] == [1, 3]
    assert all(s.overlay is not None and s.overlay[0, 0, 0] == s.image_id for s in kept)
    assert drawn == [0, 1, 3]  # image 0 entered while the heap was not full; 2 and 4 never did


def _worst_scores(n: int):
    gt, gt_segs, pred, pred_segs = _image_with_errors()
    worst = WorstImages(CATEGORIES, k=n)
    for i in range(n):
        worst(f"img{i}", pred, pred_segs, gt, gt_segs, lambda: np.zeros((16, 34, 3), np.uint8))
    return worst.worst()


def test_report_page_structure_is_self_contained():
    metrics = fake_metrics({1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9, 11: None})
    page = build_report(metrics, NAMES, _worst_scores(3))
    doc = PageStructure(page)
    summary = doc.texts("summary")
    assert [r[0] for r in summary] == ["All", "Things", "Stuff"]
    assert [c["text"] for c in doc.tables["summary"]["head"][0]][1:] == ["PQ", "SQ", "RQ", "N"]
    table = doc.tables["per-class"]
    head = table["head"][0]
    assert [c["text"] for c in head] == ["category", "PQ", "SQ", "RQ", "TP", "FP", "FN"]
    assert all("sortable" in c["attrs"].get("class", "") for c in head) and "sortable" in table["class"]
    assert sorted(r[0] for r in doc.texts("per-class")) == sorted(NAMES.values())  # one row per class
    pq_text = {r[0]: r[1] for r in doc.texts("per-class")}
    assert pq_text["car"] == "10.00" and pq_text["bus"] == "n/a"  # bus: no segments, no PQ (not 0)
    assert len(doc.svg_bars) == 4  # one bar per scored class
    widths = {b["title"].split(":")[0]: float(b["width"]) for b in doc.svg_bar_titles}
    assert widths["sky"] > widths["person"] > widths["road"] > widths["car"] > 0
    other = dict(doc.texts("other-metrics"))
    assert other["mIoU"] == "40.00" and other["bbox AP"] == "30.00" and other["segm AP"] == "25.00"
    assert len(doc.images) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in doc.images)
    assert "wrong class: car predicted as person" in page and "missed (FN): road" in page
    assert "false (FP): car" in page
    assert not re.search(r"https?://", page) and not any(s.startswith(("src=", "link=")) for s in doc.scripts)


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "chrome")) if p), None)


@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium/google-chrome) installed to render the page")
def test_report_renders_in_a_headless_browser(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(build_report(fake_metrics({1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9}), NAMES, _worst_scores(2)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    run_in_group([_browser(), "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                  "--window-size=1200,1600", page.as_uri()], check=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        lo, hi = im.convert("L").getextrema()
        assert im.size == (1200, 1600) and lo < hi  # something was drawn, not a blank page


@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium/google-chrome) installed to run the page's script")
def test_clicking_a_header_sorts_the_per_class_table(tmp_path):
    metrics = fake_metrics({1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9})
    metrics["panoptic"]["per_class"]["7"]["fn"] = 9
    metrics["panoptic"]["per_class"]["2"]["fn"] = 0
    page = build_report(metrics, NAMES)
    click = "<script>document.querySelectorAll('#per-class th')[6].click();</script></body>"  # FN, ascending
    (tmp_path / "r.html").write_text(page.replace("</body>", click), encoding="utf-8")
    dom = run_in_group([_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
                        (tmp_path / "r.html").as_uri()], check=True, timeout=120, capture_output=True, text=True).stdout
    rows = PageStructure(dom).texts("per-class")
    assert [r[6] for r in rows] == ["0", "2", "2", "9"] and rows[0][0] == "car" and rows[-1][0] == "road"
