"""report.html's context, per-class counts, wrong-class confusion and image browser, from the
report's evaluator fed with known predictions."""

from __future__ import annotations

import json
import re

import pytest
from torch.utils.data import DataLoader

from noisy_model import NoisyGroundTruthModel
from panfpn.data.build import synthetic_dataset
from panfpn.data.collate import collate_panoptic
from panfpn.evaluation.evaluator import eval_images
from panfpn.evaluation.evaluators import PanopticQuality, ReportCollector
from panfpn.evaluation.worst_images import wrong_class_pairs
from report_parse import PageStructure


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six synthetic images through the noisy model, collected by the report's evaluator."""
    ds = synthetic_dataset("val", num_images=6, seed=13, height=96, width=128, is_train=False,
                           cache_dir=str(tmp_path_factory.mktemp("synthetic")))
    model, out = NoisyGroundTruthModel(ds.metadata), tmp_path_factory.mktemp("report")
    pq = PanopticQuality(ds.metadata)
    report = ReportCollector(ds.metadata, out, k=2, context={"checkpoint": "/runs/a/model_0000100.pth"},
                             score_thresh=0.6)
    images = []
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate_panoptic):
        imgs = eval_images(batch, model(batch), ds.metadata)
        pq.process(batch, imgs)
        report.process(batch, imgs)
        images += imgs
    results = {**pq.evaluate(), **report.evaluate(), "num_images": len(images)}
    report.finish(results)
    page = (out / "report.html").read_text(encoding="utf-8")
    return ds.metadata, images, out, page


def test_context_is_at_the_top_with_the_eval_time(run):
    _, _, _, page = run
    context = dict(PageStructure(page).texts("context"))
    assert context["checkpoint"] == "/runs/a/model_0000100.pth" and re.fullmatch(r"\d+\.\d s", context["eval time"])
    assert page.index('id="context"') < page.index('id="summary"')


def test_per_class_rows_mark_things_and_stuff_and_count_segments_and_dropped_instances(run):
    metadata, images, _, page = run
    doc = PageStructure(page)
    head = [c["text"] for c in doc.tables["per-class"]["head"][0]]
    assert head == ["category", "PQ", "SQ", "RQ", "TP", "FP", "FN", "kind", "predicted", "GT", "dropped"]
    rows = {r[0]: r[7:] for r in doc.texts("per-class")}
    for cat in metadata.categories:
        pred = sum(s["category_id"] == cat.id for im in images for s in im.pred_segments)
        gt = sum(s["category_id"] == cat.id and not s.get("iscrowd", 0) for im in images for s in im.gt_segments)
        dropped = sum(int(((im.output["instances"]["scores"] < 0.6)
                           & (im.output["instances"]["labels"] == metadata.thing_ids.index(cat.id))).sum())
                      for im in images) if cat.isthing else 0
        assert rows[cat.name] == ["thing" if cat.isthing else "stuff", str(pred), str(gt), str(dropped)], cat.name
    assert sum(int(r[3]) for r in rows.values()) > 0  # the threshold dropped some instances


def test_confusion_counts_every_wrong_class_match(run):
    _, images, _, page = run
    expected = sum(len(wrong_class_pairs(im.gt_segments, im.pred_segments, im.pairs)) for im in images)
    cells = [int(c) for r in PageStructure(page).texts("confusion") for c in r[1:] if c]
    assert expected > 0 and sum(cells) == expected


def test_every_image_is_browsable_with_its_file_name_and_legend(run):
    metadata, images, out, page = run
    data = json.loads(re.search(r'<script type="application/json" id="browse-data">(.*?)</script>', page).group(1))
    assert sorted(d["file"] for d in data) == sorted(im.file_name for im in images)
    names = {c.name for c in metadata.categories}
    for d in data:
        assert (out / d["img"]).is_file() and d["img"].endswith(".jpg")
        assert d["legend"] and all(n in names and re.fullmatch(r"#[0-9a-f]{6}", c) for n, c in d["legend"])
    by_file = {im.file_name: im for im in images}
    assert all({n for n, _ in d["legend"]} == {metadata.category(s["category_id"]).name for s in
               [*by_file[d["file"]].gt_segments, *by_file[d["file"]].pred_segments]} for d in data)
    assert "browse-prev" in page and "browse-next" in page
