"""tools/eval.py's report.html: written beside eval_results.json from a real (tiny) eval run."""

import json
import re
import sys
from pathlib import Path

from panfpn.engine.eval_run import evaluate_from_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from report_parse import PageStructure  # noqa: E402


def test_eval_writes_a_self_contained_report(tiny_cfg, tiny_weights, tmp_path):
    weights = tiny_weights
    overrides = ["model.merge.score_thresh=0.0", "model.merge.stuff_area=1"]
    cfg = tiny_cfg(f"weights={weights}", "eval.max_images=null", *overrides, run_dir=tmp_path / "eval")
    metrics = evaluate_from_config(cfg, overrides=overrides)
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    doc = PageStructure(page)
    per_class = metrics["panoptic"]["per_class"]
    names = {c["id"]: c["name"] for c in json.loads((tmp_path / "eval" / "categories.json").read_text())}
    assert sorted(r[0] for r in doc.texts("per-class")) == sorted(names[int(c)] for c in per_class)
    assert len(doc.svg_bars) == sum(1 for r in per_class.values() if r["tp"] + r["fp"] + r["fn"] > 0)
    all_pq = doc.texts("summary")[0]
    assert all_pq[0] == "All" and all_pq[1] == f"{100 * metrics['panoptic']['All']['pq']:.2f}"
    assert dict(doc.texts("other-metrics"))["mIoU"] == f"{100 * metrics['sem_seg']['mIoU']:.2f}"
    head, rows = [c["text"] for c in doc.tables["per-class"]["head"][0]], {r[0]: r for r in doc.texts("per-class")}
    for task, label in (("bbox", "box AP"), ("segm", "mask AP")):  # per-category AP beside PQ, as in the JSON
        shown = {name: row[head.index(label)] for name, row in rows.items()}
        ap = {names[int(c)]: "n/a" if v is None else f"{100 * v:.2f}" for c, v in metrics[task]["per_class"].items()}
        assert ap and all(shown[n] == text for n, text in ap.items()), (task, shown, ap)
    assert 1 <= len(doc.images) <= 3 and all(i["src"].startswith("data:image/png;base64,") for i in doc.images)
    assert not re.search(r"https?://", page)


def test_eval_report_false_writes_none(tiny_cfg, tiny_weights, tmp_path):
    cfg = tiny_cfg(f"weights={tiny_weights}", "eval.report=false", run_dir=tmp_path / "eval")
    evaluate_from_config(cfg)
    assert (tmp_path / "eval" / "eval_results.json").is_file() and not (tmp_path / "eval" / "report.html").exists()
