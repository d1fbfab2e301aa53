"""tools/compare_evals.py and compare.html: two or more runs against the first, image sets checked,
summary (PQ, mIoU, AP) and per-class PQ/SQ/RQ/TP/FP/FN changes, zero shown as no change."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from panfpn.evaluation.compare_page import build_compare, make_runs
from panfpn.evaluation.report import signed_text

from process_helpers import run as run_in_group
from fake_results import fake_metrics
from report_parse import PageStructure

REPO = Path(__file__).resolve().parents[2]
CATS = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "car", "isthing": 1},
        {"id": 7, "name": "road", "isthing": 0}, {"id": 9, "name": "sky", "isthing": 0},
        {"id": 11, "name": "bus", "isthing": 1}]
NAMES = {c["id"]: c["name"] for c in CATS}


def _tool():
    spec = importlib.util.spec_from_file_location("compare_evals", REPO / "tools" / "compare_evals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(tmp_path: Path, runs: dict[str, dict]) -> list[str]:
    paths = []
    for name, m in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval_results.json").write_text(json.dumps(m))
        (tmp_path / name / "categories.json").write_text(json.dumps(CATS))
        paths.append(str(tmp_path / name / "eval_results.json"))
    return paths


def test_two_runs_per_class_changes_sorted_with_zero_as_no_change(tmp_path):
    a = fake_metrics({1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9, 11: 0.5})
    b = fake_metrics({1: 0.7, 2: 0.4, 7: 0.55, 9: 0.3, 11: None}, fp=2, miou=0.4)
    out = tmp_path / "compare.html"
    proc = run_in_group([sys.executable, str(REPO / "tools" / "compare_evals.py"), *_write(tmp_path, {"a": a, "b": b}),
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = PageStructure(out.read_text(encoding="utf-8"))
    head = [c["text"] for c in doc.tables["per-class"]["head"][0]]
    assert head == ["category", "PQ A", "PQ B", "ΔPQ B", "ΔSQ B", "ΔRQ B", "ΔTP B", "ΔFP B", "ΔFN B"]
    rows = doc.texts("per-class")
    assert [r[0] for r in rows] == ["sky", "person", "road", "car", "bus"]  # -60, -10, 0, +30, then n/a
    assert [r[3] for r in rows] == ["-60.00", "-10.00", "0.00", "+30.00", "n/a"]
    road = doc.tables["per-class"]["rows"][2]
    assert road[3]["attrs"]["class"] == "muted"  # no change: neither a gain nor a loss
    assert rows[4][1:3] == ["50.00", "n/a"] and rows[4][6:] == ["-3", "-1", "-2"]  # bus: no segments in B
    person = doc.tables["per-class"]["rows"][1]
    assert person[7]["text"] == "+1" and person[7]["attrs"]["class"] == "neg"  # one more FP is a loss
    assert person[6]["text"] == "0" and person[6]["attrs"]["class"] == "muted"
    summary = {r[0]: r[1:] for r in doc.texts("summary")}
    assert summary["PQ All"] == ["50.00", "50.00", "0.00"] and summary["mIoU"] == ["40.00", "40.00", "0.00"]
    assert summary["bbox AP"] == ["30.00", "30.00", "0.00"] and "segm AP75" in summary
    assert [r[2] for r in doc.texts("runs")] == ["8", "8"]
    assert "same 8 images" in "".join(doc.attr_values) + out.read_text(encoding="utf-8")
    assert len(doc.svg_bars) == 4 and "+0.00" not in out.read_text(encoding="utf-8")
    assert not re.search(r"https?://", out.read_text(encoding="utf-8"))


def test_three_runs_each_against_the_first():
    runs = make_runs([fake_metrics({1: 0.5, 2: 0.2}), fake_metrics({1: 0.6, 2: 0.2}, miou=0.5),
                      fake_metrics({1: 0.4, 2: 0.3}, miou=0.35)], ["a.json", "b.json", "c.json"])
    doc = PageStructure(build_compare(runs, NAMES))
    head = [c["text"] for c in doc.tables["per-class"]["head"][0]]
    assert head[:3] == ["category", "PQ A", "PQ B"] and head[9:11] == ["PQ C", "ΔPQ C"]
    rows = {r[0]: r for r in doc.texts("per-class")}
    assert rows["person"][3] == "+10.00" and rows["person"][10] == "-10.00" and rows["car"][10] == "+10.00"
    assert {r[0]: r[1:] for r in doc.texts("summary")}["mIoU"] == ["40.00", "50.00", "+10.00", "35.00", "-5.00"]
    assert [r[0] for r in doc.texts("runs")] == ["A", "B", "C"]
    assert len(doc.svg_bars) == 4  # two charts (B - A, C - A) of two classes


@pytest.mark.parametrize("b_images, words", [(range(16), "scored 8 images and .* scored 16"),
                                             (range(8, 16), "scored 8 images and .* scored 8 .other images")])
def test_different_image_sets_are_refused_unless_allowed(tmp_path, capsys, b_images, words):
    paths = _write(tmp_path, {"a": fake_metrics({1: 0.5}), "b": fake_metrics({1: 0.6}, images=b_images)})
    tool = _tool()
    with pytest.raises(SystemExit) as err:
        tool.main([*paths, "--out", str(tmp_path / "c.html")])
    message = str(err.value.code)
    assert re.search(words, message) and paths[0] in message and paths[1] in message
    assert "--allow-different-images" in message and not (tmp_path / "c.html").exists()
    tool.main([*paths, "--out", str(tmp_path / "c.html"), "--allow-different-images"])
    doc = PageStructure((tmp_path / "c.html").read_text(encoding="utf-8"))
    assert [r[2] for r in doc.texts("runs")] == ["8", str(len(b_images))]
    assert "not checked to be the same images" in (tmp_path / "c.html").read_text(encoding="utf-8").lower()
    assert "warning" in capsys.readouterr().err


def test_results_without_an_image_set_record_are_refused_unless_allowed(tmp_path):
    paths = _write(tmp_path, {"a": fake_metrics({1: 0.5}), "b": fake_metrics({1: 0.6}, record=False)})
    proc = run_in_group([sys.executable, str(REPO / "tools" / "compare_evals.py"), *paths, "--out",
                           str(tmp_path / "c.html")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and f"{paths[1]} records no image set (8 images" in proc.stderr
    _tool().main([*paths, "--out", str(tmp_path / "c.html"), "--allow-different-images"])
    assert [r[3] for r in PageStructure((tmp_path / "c.html").read_text(encoding="utf-8")).texts("runs")][1] == \
        "not recorded"


def test_runs_with_different_categories_are_refused():
    with pytest.raises(ValueError, match=r"only in A \[9\]"):
        build_compare(make_runs([fake_metrics({1: 0.5, 9: 0.2}), fake_metrics({1: 0.5})], ["a", "b"]), NAMES)


def test_a_change_that_rounds_to_zero_has_no_sign():
    assert [signed_text(v) for v in (0.0, -0.0, -0.004, 0.004, 0.02, -1.5)] == \
        ["0.00", "0.00", "0.00", "0.00", "+0.02", "-1.50"]
    assert signed_text(0, 0) == "0" and signed_text(-2, 0) == "-2"


def test_the_same_image_ids_with_other_ground_truth_are_refused_unless_allowed(tmp_path):
    """Two datasets numbered alike (ids 1..N of a labelling tool's export, the synthetic data with
    another seed) passed the id check: the page said "scored the same 8 images" of evaluations of
    different images. The ground-truth digest tells them apart; equal ground truth still compares."""
    paths = _write(tmp_path, {"a": fake_metrics({1: 0.5}, gt="1:0:40"), "b": fake_metrics({1: 0.6}, gt="1:0:41"),
                              "c": fake_metrics({1: 0.7}, gt="1:0:40")})
    tool = _tool()
    with pytest.raises(SystemExit) as err:
        tool.main([paths[0], paths[1], "--out", str(tmp_path / "ab.html")])
    assert f"{paths[0]} and {paths[1]} scored 8 images of the same ids but with other ground truth" \
        in str(err.value.code)
    assert not (tmp_path / "ab.html").exists()
    tool.main([paths[0], paths[2], "--out", str(tmp_path / "ac.html")])
    assert "same 8 images (ids and ground truth;" in (tmp_path / "ac.html").read_text(encoding="utf-8")
    tool.main([paths[0], paths[1], "--out", str(tmp_path / "ab.html"), "--allow-different-images"])
    assert "not checked to be the same images" in (tmp_path / "ab.html").read_text(encoding="utf-8").lower()
