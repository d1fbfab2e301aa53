"""Per-category box / mask AP on report.html and compare.html, from eval_results.json files made the
way tools/eval.py makes them (COCOAPEvaluator's results through eval_run's JSON round trip and
write_json_atomic), an older file without ``per_class`` and a run evaluated without AP."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.coco_ap import COCOAPEvaluator
from panfpn.evaluation.report import build_report, write_report
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.json_values import nonfinite_to_null

from fake_results import fake_metrics
from process_helpers import run as run_in_group
from report_parse import PageStructure

REPO = Path(__file__).resolve().parents[2]
CATS = [{"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 2, "name": "car", "isthing": 1, "color": [0, 0, 142]},
        {"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
        {"id": 9, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
        {"id": 11, "name": "bus", "isthing": 1, "color": [0, 60, 100]}]
NAMES = {c["id"]: c["name"] for c in CATS}
PQ = {1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9, 11: None}


def _coco_ap() -> dict:
    """COCOAPEvaluator on one 32x32 image: a person found exactly (AP 1), a car box / mask covering
    10 of its 14 rows (IoU 140/196: AP 0.5), a bus detected but never in the ground truth (no AP)."""
    gt = np.zeros((32, 32), np.int64)
    gt[0:10, 0:10], gt[16:30, 16:30] = 1, 2
    ap = COCOAPEvaluator(CATS)
    ap.add_ground_truth(0, gt, [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0}])
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 0:10, 0:10], masks[1, 16:26, 16:30], masks[2, 0:5, 20:30] = True, True, True
    ap.update(0, np.array([[0, 0, 10, 10], [16, 16, 30, 26], [20, 0, 30, 5]], np.float32),
              np.array([0.9, 0.8, 0.7]), np.array([1, 2, 11]), masks)
    return ap.compute()


def _written(path: Path, metrics: dict) -> dict:
    """``metrics`` as tools/eval.py writes eval_results.json (eval_run.evaluate_from_config), read back."""
    write_json_atomic(path, nonfinite_to_null(json.loads(json.dumps({**metrics, "context": {}}, default=str))))
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """An eval_results.json with AP computed by the evaluator (person's box AP then set to 0.4567)."""
    results = _written(tmp_path_factory.mktemp("eval") / "eval_results.json", {**fake_metrics(PQ), **_coco_ap()})
    for task in ("bbox", "segm"):  # the evaluator's format: thing ids as JSON keys, null without ground truth
        per_class = results[task]["per_class"]
        assert per_class == {"1": pytest.approx(1.0), "2": pytest.approx(0.5), "11": None}
    results["bbox"]["per_class"]["1"] = 0.4567
    return results


def _old_format(results: dict) -> dict:
    """eval_results.json written before per-category AP was: the AP summary without ``per_class``."""
    return {**results, **{t: {k: v for k, v in results[t].items() if k != "per_class"} for t in ("bbox", "segm")}}


def _without_ap(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("bbox", "segm")}


def _head(doc: PageStructure, table: str) -> list[str]:
    return [c["text"] for c in doc.tables[table]["head"][0]]


# ----- report.html -------------------------------------------------------------------------------

def test_report_shows_box_and_mask_ap_per_category_beside_pq(evaluated, tmp_path):
    write_report(tmp_path, evaluated, DatasetMetadata.from_coco_categories(CATS), [])
    doc = PageStructure((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert _head(doc, "per-class") == ["category", "PQ", "SQ", "RQ", "box AP", "mask AP", "TP", "FP", "FN"]
    rows = {r[0]: r for r in doc.texts("per-class")}
    assert rows["person"][1:6] == ["80.00", "90.00", "88.89", "45.67", "100.00"]
    assert rows["car"][4:6] == ["50.00", "50.00"]
    assert rows["bus"][4:6] == ["n/a", "n/a"]  # a thing without ground truth: COCO's -1, Detectron2's nan
    assert rows["road"][4:6] == rows["sky"][4:6] == ["–", "–"]  # stuff: no instances, no AP
    assert [r[0] for r in doc.texts("per-class")] == ["sky", "person", "road", "car", "bus"]  # by PQ, as before
    person = next(r for r in doc.tables["per-class"]["rows"] if r[0]["text"] == "person")
    assert float(person[4]["attrs"]["data-v"]) == pytest.approx(45.67)  # sorts by its number
    assert "box AP / mask AP: COCO AP" in (tmp_path / "report.html").read_text(encoding="utf-8")  # what they are


@pytest.mark.parametrize("make, note", [(_old_format, "AP per category not recorded"), (_without_ap, None)])
def test_report_without_per_category_ap_is_the_page_as_before(evaluated, make, note):
    page = build_report(make(evaluated), NAMES)
    doc = PageStructure(page)
    assert _head(doc, "per-class") == ["category", "PQ", "SQ", "RQ", "TP", "FP", "FN"]
    assert {r[0]: r[1] for r in doc.texts("per-class")}["car"] == "10.00" and len(doc.svg_bars) == 4
    assert (note in page) if note else ('id="ap-note"' not in page)


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "chromium-headless-shell",
                                               "google-chrome", "chrome")) if p), None)


@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium/google-chrome) to run the page's script")
def test_clicking_box_ap_sorts_defined_ap_above_undefined_and_stuff(evaluated, tmp_path):
    click = "<script>var h=document.querySelectorAll('#per-class th');h[4].click();h[4].click();</script></body>"
    (tmp_path / "r.html").write_text(build_report(evaluated, NAMES).replace("</body>", click), encoding="utf-8")
    dom = run_in_group([_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
                        (tmp_path / "r.html").as_uri()], check=True, timeout=120, capture_output=True, text=True).stdout
    rows = PageStructure(dom).texts("per-class")
    assert [r[4] for r in rows] == ["50.00", "45.67", "n/a", "–", "–"]  # descending: numbers, n/a, stuff


# ----- compare.html ------------------------------------------------------------------------------

def _compare(tmp_path: Path, runs: dict[str, dict]) -> tuple[str, PageStructure]:
    """tools/compare_evals.py over eval_results.json files written like tools/eval.py's."""
    paths = []
    for name, metrics in runs.items():
        (tmp_path / name).mkdir()
        _written(tmp_path / name / "eval_results.json", metrics)
        write_json_atomic(tmp_path / name / "categories.json", CATS)
        paths.append(str(tmp_path / name / "eval_results.json"))
    spec = importlib.util.spec_from_file_location("compare_evals", REPO / "tools" / "compare_evals.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([*paths, "--out", str(tmp_path / "compare.html")])
    page = (tmp_path / "compare.html").read_text(encoding="utf-8")
    return page, PageStructure(page)


def test_compare_shows_ap_per_category_per_run_with_changes_and_not_evaluated(evaluated, tmp_path):
    b = json.loads(json.dumps(evaluated))
    b["bbox"]["per_class"].update({"1": 0.5, "2": 0.25})
    b["segm"]["per_class"]["1"] = 0.98
    page, doc = _compare(tmp_path, {"a": evaluated, "b": b, "c": _old_format(evaluated), "d": _without_ap(evaluated)})
    assert _head(doc, "per-class-ap") == ["category", "box AP A", "mask AP A"] + [
        h for k in "BCD" for h in (f"box AP {k}", f"Δbox AP {k}", f"mask AP {k}", f"Δmask AP {k}")]
    rows = {r[0]: r[1:] for r in doc.texts("per-class-ap")}
    assert set(rows) == {"person", "car", "bus"}  # things only
    assert rows["person"][:7] == ["45.67", "100.00", "50.00", "+4.33", "98.00", "-2.00"] + ["not evaluated"]
    assert rows["car"][:6] == ["50.00", "50.00", "25.00", "-25.00", "50.00", "0.00"]
    assert rows["bus"][:6] == ["n/a", "n/a", "n/a", "n/a", "n/a", "n/a"]
    for letter_cells in (rows["person"][6:10], rows["person"][10:14]):  # C: old file, D: no AP
        assert letter_cells == ["not evaluated", "n/a", "not evaluated", "n/a"]
    assert [r[0] for r in doc.texts("per-class-ap")] == ["person", "car", "bus"]  # B's Δ mask AP: -2, 0, n/a
    delta = {r[0]["text"]: r for r in doc.tables["per-class-ap"]["rows"]}
    assert delta["car"][4]["attrs"]["class"] == "neg" and delta["person"][4]["attrs"]["class"] == "pos"
    why = re.search(r'<p id="ap-absent"[^>]*>(.*?)</p>', page).group(1)  # the reasons, one per column
    assert why.count(": its eval_results.json has no per-category AP") == 2 and why.count(": evaluated without it") == 2
    assert "box AP of C" in why and "mask AP of D" in why and " of A" not in why and " of B" not in why
    summary = {r[0]: r[1:] for r in doc.texts("summary")}
    box = f"{100 * evaluated['bbox']['AP']:.2f}"  # the mean of person's and car's: 75.00
    assert summary["bbox AP"] == [box, box, "0.00", box, "0.00", "not evaluated", "n/a"] and box == "75.00"
    assert len(doc.texts("per-class")) == 5 and "+0.00" not in page  # the PQ table as before


def test_compare_of_runs_without_per_category_ap_has_no_ap_table(evaluated, tmp_path):
    page, doc = _compare(tmp_path, {"a": _old_format(evaluated), "b": _without_ap(evaluated)})
    assert "per-class-ap" not in doc.tables and len(doc.texts("per-class")) == 5
    assert {r[0]: r[1:] for r in doc.texts("summary")}["segm AP"] == ["75.00", "not evaluated", "n/a"]
