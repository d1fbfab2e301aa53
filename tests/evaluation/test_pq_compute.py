"""pq_compute against hotcoco (an independent, panopticapi-parity PQ) on generated and real data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from panfpn.evaluation.pq import main as pq_main
from panfpn.evaluation.pq import pq_compute, task_bounds
from pq_case_gen import THINGS, assert_same, write_cases
from process_helpers import run as run_in_group

hotcoco_panoptic = pytest.importorskip("hotcoco.panoptic")

SAMPLE = Path(__file__).parents[1] / "assets" / "coco_panoptic_sample"


def hotcoco_results(gt_json: Path, pred_json: Path, **folders) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = hotcoco_panoptic.PanopticEval(str(gt_json), str(pred_json), **folders)
        ev.evaluate()
        return ev.results()


def corner_counts(cases) -> dict:
    """Count the corner situations the cases contain, straight from the pixels."""
    seen = {"iou_exactly_half": 0, "ignored_exactly_half": 0, "ignored_over_half": 0,
            "two_crowds_one_category": 0, "pred_only_category": 0, "sizes": set()}
    for gt, gt_segs, pred, pred_segs in cases:
        seen["sizes"].add(gt.shape)
        gt_cats = {s["category_id"] for s in gt_segs}
        crowd_cats = [s["category_id"] for s in gt_segs if s["iscrowd"]]
        seen["two_crowds_one_category"] += len(crowd_cats) != len(set(crowd_cats))
        for ps in pred_segs:
            pm = pred == ps["id"]
            seen["pred_only_category"] += ps["category_id"] not in gt_cats
            on_void = int((pm & (gt == 0)).sum())
            crowd = [s for s in gt_segs if s["iscrowd"] and s["category_id"] == ps["category_id"]]
            ignored = on_void + (int((pm & (gt == crowd[-1]["id"])).sum()) if crowd else 0)
            seen["ignored_exactly_half"] += 2 * ignored == int(pm.sum())
            seen["ignored_over_half"] += 2 * ignored > int(pm.sum())
            for gs in gt_segs:
                if gs["iscrowd"] or gs["category_id"] != ps["category_id"]:
                    continue
                gm = gt == gs["id"]
                inter = int((gm & pm).sum())
                union = int((gm | pm).sum()) - on_void
                seen["iou_exactly_half"] += inter > 0 and 2 * inter == union
    return seen


@pytest.mark.parametrize("seed", range(8))
def test_matches_hotcoco_on_generated_cases(tmp_path, seed):
    gt_json, pred_json, cases = write_cases(tmp_path, seed, 100)
    assert_same(pq_compute(gt_json, pred_json, workers=1), hotcoco_results(gt_json, pred_json))


def test_generated_cases_cover_the_corners(tmp_path):
    _, _, cases = write_cases(tmp_path, 0, 60)
    seen = corner_counts(cases)
    for key in ("iou_exactly_half", "ignored_exactly_half", "ignored_over_half",
                "two_crowds_one_category", "pred_only_category"):
        assert seen[key] > 0, key
    assert len(seen["sizes"]) > 20
    assert any(s["category_id"] in THINGS and s["iscrowd"] for c in cases for s in c[1])


def test_workers_and_cache_give_identical_results(tmp_path):
    gt_json, pred_json, _ = write_cases(tmp_path, 7, 40)
    single = pq_compute(gt_json, pred_json, workers=1)
    assert_same(pq_compute(gt_json, pred_json, workers=2), single)
    cache = tmp_path / "cache"
    assert pq_compute(gt_json, pred_json, workers=1, cache_dir=cache) == single
    assert len(list(cache.glob("*.runs"))) == 40
    assert pq_compute(gt_json, pred_json, workers=1, cache_dir=cache) == single  # from cache

    # A changed ground-truth PNG invalidates its entry: copy image 1's pair over image 0's.
    gt = json.loads(gt_json.read_text())
    pred = json.loads(pred_json.read_text())
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    shutil.copy(gt_dir / "1.png", gt_dir / "0.png")
    shutil.copy(pred_dir / "1.png", pred_dir / "0.png")
    os.utime(gt_dir / "0.png", ns=(1, 1))  # a different mtime even on a coarse clock
    gt["annotations"][0]["segments_info"] = gt["annotations"][1]["segments_info"]
    pred["annotations"][0]["segments_info"] = pred["annotations"][1]["segments_info"]
    gt_json.write_text(json.dumps(gt))
    pred_json.write_text(json.dumps(pred))
    fresh = pq_compute(gt_json, pred_json, workers=1)
    assert fresh != single
    assert pq_compute(gt_json, pred_json, workers=1, cache_dir=cache) == fresh


@pytest.mark.parametrize("n_slices, workers", [(1, 1), (3, 2), (50, 2), (128, 2), (128, 16), (7, 64)])
def test_pool_tasks_cover_every_slice_once_and_shrink_to_one(n_slices, workers):
    """The pool's tasks are runs of consecutive slices that cover each slice once, in order, and
    shrink so that the last task of each worker is one slice (the workers end within about one
    slice of each other instead of one equal task: ~45 ms apart on Cityscapes-size images)."""
    bounds = task_bounds(n_slices, workers)
    sizes = [stop - first for first, stop in zip(bounds, bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == n_slices and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-min(workers, n_slices):] == [1] * min(workers, n_slices)
    if n_slices >= 16 * workers:  # enough slices: far fewer tasks (messages) than slices
        assert len(sizes) <= n_slices // 2


def test_real_sample_ground_truth_against_itself(tmp_path):
    gt_json = SAMPLE / "panoptic_examples.json"
    results = pq_compute(gt_json, gt_json, workers=1)
    gt = json.loads(gt_json.read_text())
    occurring = {s["category_id"] for a in gt["annotations"] for s in a["segments_info"]
                 if not s["iscrowd"]}
    assert results["All"]["n"] == len(occurring) >= 5
    for cat, r in results["per_class"].items():
        if cat in occurring:
            assert (r["pq"], r["sq"], r["rq"], r["fp"], r["fn"]) == (1.0, 1.0, 1.0, 0, 0), cat
        else:
            assert r["tp"] + r["fp"] + r["fn"] == 0
    assert results["All"]["pq"] == 1.0
    assert_same(results, hotcoco_results(gt_json, gt_json))


def test_real_sample_perturbed_prediction(tmp_path):
    """Real PNGs with one segment relabelled and one shifted, against hotcoco."""
    from PIL import Image

    gt_json = SAMPLE / "panoptic_examples.json"
    gt = json.loads(gt_json.read_text())
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for ann in gt["annotations"]:
        rgb = np.array(Image.open(SAMPLE / "panoptic_examples" / ann["file_name"]))
        Image.fromarray(np.roll(rgb, 7, axis=1)).save(pred_dir / ann["file_name"])
        ann["segments_info"][0]["category_id"] = gt["categories"][5]["id"]
    (tmp_path / "pred.json").write_text(json.dumps(gt))
    ours = pq_compute(gt_json, tmp_path / "pred.json", workers=1)
    assert 0.3 < ours["All"]["pq"] < 1.0
    assert_same(ours, hotcoco_results(gt_json, tmp_path / "pred.json"))


def test_cli_prints_table_and_writes_results(tmp_path, capsys):
    gt_json, pred_json, _ = write_cases(tmp_path, 3, 10)
    out = tmp_path / "res.json"
    results = pq_main(["--gt-json", str(gt_json), "--pred-json", str(pred_json), "--workers", "1",
                       "--out", str(out)])
    printed = capsys.readouterr().out
    assert "PQ" in printed and "Things" in printed and "Stuff" in printed
    assert f"{100 * results['All']['pq']:5.1f}" in printed
    assert json.loads(out.read_text())["All"]["pq"] == results["All"]["pq"]


def test_cli_reports_bad_input_without_traceback(tmp_path):
    gt_json, pred_json, _ = write_cases(tmp_path, 3, 3)
    pred = json.loads(pred_json.read_text())
    pred["annotations"].pop(1)
    pred_json.write_text(json.dumps(pred))
    proc = run_in_group([sys.executable, "-m", "panfpn.evaluation.pq", "--gt-json", str(gt_json),
                         "--pred-json", str(pred_json), "--workers", "1"],
                        capture_output=True, text=True,
                        cwd=Path(__file__).parents[2])
    assert proc.returncode == 2
    assert "image 1" in proc.stderr and "no prediction" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_writes_out_when_its_reader_closes_stdout_early(tmp_path):
    # `python -m panfpn.evaluation.pq ... --out res.json | head -3`: the table's print raised
    # BrokenPipeError before --out was written (a traceback, and no res.json).
    gt_json, pred_json, _ = write_cases(tmp_path, 3, 3)
    out = tmp_path / "res.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        proc = run_in_group([sys.executable, "-m", "panfpn.evaluation.pq", "--gt-json", str(gt_json),
                             "--pred-json", str(pred_json), "--workers", "1", "--out", str(out)],
                            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                            cwd=Path(__file__).parents[2])
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0
    assert set(json.loads(out.read_text())) >= {"All", "Things", "Stuff"}
