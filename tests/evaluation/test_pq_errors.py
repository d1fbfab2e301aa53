"""Every input the COCO panoptic API rejects is rejected with a message naming the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.evaluation import PQAccumulator, PQInputError, pq_compute
from pq_case_gen import CATEGORIES, to_rgb, write_panoptic
from process_helpers import run as run_in_group

BAD = "frankfurt_000000_000294"  # string ids, as in Cityscapes


def _dataset(tmp_path):
    gt = np.zeros((6, 8), np.int64)
    gt[:, :4] = 5
    gt[:, 4:] = 70000
    segs = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 24},
            {"id": 70000, "category_id": 101, "iscrowd": 0, "area": 24}]
    pred = np.where(gt == 5, 9, 3)
    psegs = [{"id": 9, "category_id": 1}, {"id": 3, "category_id": 101}]
    images = [("ok_image", gt, segs), (BAD, gt, segs)]
    gt_json = write_panoptic(tmp_path, "gt", images)
    pred_json = write_panoptic(tmp_path, "pred", [(i, pred, psegs) for i, _, _ in images])
    return gt_json, pred_json


def _edit_pred(pred_json, fn):
    data = json.loads(pred_json.read_text())
    fn(data["annotations"][1])
    pred_json.write_text(json.dumps(data))


def _repaint(tmp_path, id_map):
    Image.fromarray(to_rgb(id_map)).save(tmp_path / "pred" / f"{BAD}.png")


def _case_png_id_not_in_json(tmp_path, pred_json):
    _edit_pred(pred_json, lambda a: a["segments_info"].pop(0))
    return "in the predicted id map (PNG) but not in the predicted segments_info"


def _case_json_id_not_in_png(tmp_path, pred_json):
    _edit_pred(pred_json, lambda a: a["segments_info"].append({"id": 77, "category_id": 1}))
    return "[77] are in the predicted segments_info (JSON) but not in the predicted id map"


def _case_unknown_category(tmp_path, pred_json):
    _edit_pred(pred_json, lambda a: a["segments_info"][0].update(category_id=2))
    return "unknown category_id 2"


def _case_missing_prediction(tmp_path, pred_json):
    data = json.loads(pred_json.read_text())
    data["annotations"].pop(1)
    pred_json.write_text(json.dumps(data))
    return "no prediction"


def _case_size_mismatch(tmp_path, pred_json):
    _repaint(tmp_path, np.where(np.arange(7)[None, :] < 4, 9, 3).repeat(6, 0))
    return "6x8"


def _case_duplicate_pred_id(tmp_path, pred_json):
    _edit_pred(pred_json, lambda a: a["segments_info"].append({"id": 9, "category_id": 1}))
    return "listed twice in the predicted segments_info"


def _case_duplicate_gt_id(tmp_path, pred_json):
    gt_json = tmp_path / "gt.json"
    data = json.loads(gt_json.read_text())
    data["annotations"][1]["segments_info"].append(dict(data["annotations"][1]["segments_info"][0]))
    gt_json.write_text(json.dumps(data))
    return "listed twice in the ground-truth segments_info"


CASES = [_case_png_id_not_in_json, _case_json_id_not_in_png, _case_unknown_category,
         _case_missing_prediction, _case_size_mismatch, _case_duplicate_pred_id,
         _case_duplicate_gt_id]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
def test_pq_compute_rejects(tmp_path, case, workers):
    gt_json, pred_json = _dataset(tmp_path)
    pq_compute(gt_json, pred_json, workers=workers)  # valid before the edit
    expected = case(tmp_path, pred_json)
    with pytest.raises(PQInputError) as info:
        pq_compute(gt_json, pred_json, workers=workers)
    assert BAD in str(info.value)
    assert expected in str(info.value)


def test_an_image_id_written_as_text_in_one_json_is_named_as_such(tmp_path):
    # an exporter writing "7" in the predictions for the ground truth's 7: panopticapi (and we)
    # match ids as they are; the error said only 'no prediction', as if the image were missing
    gt_json, pred_json = _dataset(tmp_path)
    for path, new_id in ((gt_json, 7), (pred_json, "7")):
        data = json.loads(path.read_text())
        data["annotations"][1]["image_id"] = new_id
        for image in data.get("images", []):
            if image["id"] == BAD:
                image["id"] = new_id
        path.write_text(json.dumps(data))
    with pytest.raises(PQInputError, match=r"image 7: no prediction for this image \(the predictions have "
                                           r"image id '7', a string, the ground truth 7, a number: ids must "
                                           r"be written alike in both JSONs\)"):
        pq_compute(gt_json, pred_json, workers=1)


def test_missing_folder_and_png_are_named(tmp_path):
    gt_json, pred_json = _dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pq_compute(gt_json, pred_json, pred_folder=tmp_path / "nowhere")
    (tmp_path / "pred" / f"{BAD}.png").unlink()
    with pytest.raises(FileNotFoundError, match=BAD):
        pq_compute(gt_json, pred_json, workers=1)


def _cli(*args):
    import os
    import sys
    return run_in_group([sys.executable, "-m", "panfpn.evaluation.pq", *map(str, args)],
                        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("which,content", [
    *((w, c) for w in ("gt", "pred") for c in ("{not json", "[1, 2]", '{"annotations": [{"image_id": 1}]}')),
    ("gt", '{"annotations": [], "categories": [{"isthing": 1}]}')])
def test_cli_invalid_json_is_one_line_naming_the_file(tmp_path, which, content):
    gt_json, pred_json = _dataset(tmp_path)
    bad = gt_json if which == "gt" else pred_json
    bad.write_text(content)
    proc = _cli("--gt-json", gt_json, "--pred-json", pred_json, "--workers", 1)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert ("ground-truth" if which == "gt" else "prediction") in lines[0]


def test_cli_missing_prediction_json_is_named_as_such(tmp_path):
    gt_json, _ = _dataset(tmp_path)
    missing = tmp_path / "elsewhere" / "preds.json"
    proc = _cli("--gt-json", gt_json, "--pred-json", missing)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: prediction JSON not found: {missing}"
    proc = _cli("--gt-json", tmp_path / "no_gt.json", "--pred-json", missing)
    assert proc.stderr.strip() == f"error: ground-truth JSON not found: {tmp_path / 'no_gt.json'}"


def _accumulator_inputs():
    gt = torch.zeros(6, 8, dtype=torch.int32)
    gt[:, 4:] = 70000
    gt[:, :4] = 5
    pred = torch.where(gt == 5, 9, 3).int()
    segs = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 24},
            {"id": 70000, "category_id": 101, "iscrowd": 0, "area": 24}]
    return pred, [{"id": 9, "category_id": 1}, {"id": 3, "category_id": 101}], gt, segs


@pytest.mark.parametrize("edit, expected", [
    (lambda p, ps, g, gs: (p, ps[:1], g, gs), "not in the predicted segments_info"),
    (lambda p, ps, g, gs: (p, ps + [{"id": 4, "category_id": 1}], g, gs),
     "[4] are in the predicted"),
    (lambda p, ps, g, gs: (p, [dict(ps[0], category_id=2), ps[1]], g, gs), "unknown category_id 2"),
    (lambda p, ps, g, gs: (p[:, :7], ps, g, gs), "(6, 7)"),
    (lambda p, ps, g, gs: (p, ps + ps[:1], g, gs), "listed twice"),
    (lambda p, ps, g, gs: (p - 5, ps, g, gs), "negative ids"),
])
def test_accumulator_rejects(edit, expected):
    acc = PQAccumulator(CATEGORIES)
    acc.update(*_accumulator_inputs(), image_id="fine")
    with pytest.raises(PQInputError) as info:
        acc.update(*edit(*_accumulator_inputs()), image_id=BAD)
    assert BAD in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("which,bad", [("pred", "L"), ("pred", "I;16"), ("gt", "L"), ("pred", "truncated")])
def test_non_rgb_or_truncated_png_is_refused_naming_image_and_file(tmp_path, which, bad, cache):
    """A greyscale PNG was decoded as grey RGB by libspng: wrong ids, and a 16-bit one silently
    lost its low byte; a truncated one raised a ValueError the CLI showed as a traceback."""
    gt_json, pred_json = _dataset(tmp_path)
    png = tmp_path / which / f"{BAD}.png"
    with Image.open(png) as img:
        grey = np.asarray(img.convert("L"))
    if bad == "truncated":
        png.write_bytes(png.read_bytes()[:60])
    else:
        Image.fromarray(grey if bad == "L" else grey.astype(np.uint16) * 257).save(png)
    with pytest.raises(PQInputError) as info:
        pq_compute(gt_json, pred_json, workers=1, cache_dir=tmp_path / "cache" if cache else None)
    message = str(info.value)
    assert message.startswith(f"image {BAD!r}: {png}: ")
    assert (f"got image mode {bad!r}" if bad != "truncated" else "cannot read as a PNG") in message
    proc = _cli("--gt-json", gt_json, "--pred-json", pred_json, "--workers", 1)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}"
