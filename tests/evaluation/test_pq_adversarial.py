"""pq_compute on inputs built to break it, in COCO-panoptic's convention (id = R + 256 G + 256^2 B).

Each case was run through panopticapi (COCO's reference, not on PyPI) when it was written; the
numbers asserted here are worked out by hand so that the tests run without it. The promise: the
reference's number on every input it accepts, and an error naming the image or the file where it
crashes or silently gives a wrong number.

The base image (6x8): ground truth 5 (person, a thing) on the left half, 70000 (grass, stuff) on the
right, 24 pixels each; the prediction 9 (person) and 3 (grass) on the same halves, its top row
void. Each prediction covers 20 pixels of its segment and no void: IoU 20 / 24, so PQ = SQ = 5/6.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from panfpn.data.panoptic_io import decode_id_png_rgb
from panfpn.evaluation import PQInputError, pq_compute
from pq_case_gen import CATEGORIES, to_rgb, write_cases, write_panoptic
from process_helpers import run as run_in_group

IMAGE = "frankfurt_000000_000294"
GT = np.where(np.arange(8)[None, :] < 4, 5, 70000).repeat(6, 0)
PRED = np.where(GT == 5, 9, 3)
PRED[0] = 0
GT_SEGMENTS = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 24, "bbox": [0, 0, 4, 6]},
               {"id": 70000, "category_id": 101, "iscrowd": 0, "area": 24, "bbox": [4, 0, 4, 6]}]
PRED_SEGMENTS = [{"id": 9, "category_id": 1}, {"id": 3, "category_id": 101}]


def _dataset(tmp_path):
    """The base image's ground truth and prediction: (gt.json, pred.json), PNGs in gt/, pred/."""
    gt_json = write_panoptic(tmp_path, "gt", [(IMAGE, GT, GT_SEGMENTS)], CATEGORIES)
    pred_json = write_panoptic(tmp_path, "pred", [(IMAGE, PRED, PRED_SEGMENTS)])
    return gt_json, pred_json


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _segments(data):
    return data["annotations"][0]["segments_info"]


def _save_png(path, id_map, **options):
    Image.fromarray(to_rgb(id_map)).save(path, **options)


def test_cached_ground_truth_rewritten_with_its_size_and_mtime_is_decoded_again(tmp_path):
    """The cache was keyed by (path, mtime, size) only: a ground-truth PNG rewritten in place with
    the same size and its mtime put back (cp -p, rsync -t) kept its stale runs: PQ 5/6 from the
    cache where the file (and panopticapi) gives 0."""
    gt_json, pred_json = _dataset(tmp_path)
    png, cache = tmp_path / "gt" / f"{IMAGE}.png", tmp_path / "cache"
    _save_png(png, GT, compress_level=0)  # stored blocks: the file size depends on H and W only
    assert pq_compute(gt_json, pred_json, workers=1, cache_dir=cache)["All"]["pq"] == pytest.approx(5 / 6)
    before = png.stat()
    _save_png(png, np.where(GT == 5, 70000, 5), compress_level=0)  # the halves swapped: no match
    os.utime(png, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (png.stat().st_size, png.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    fresh = pq_compute(gt_json, pred_json, workers=1)
    assert fresh["All"]["pq"] == 0.0
    assert pq_compute(gt_json, pred_json, workers=1, cache_dir=cache) == fresh


def test_animated_png_is_read_as_its_idat_image(tmp_path):
    """Of an APNG whose IDAT image is not a frame, Wuffs decoded the first frame: PQ 0 where
    panopticapi (Pillow) and libspng read the IDAT image, PQ 5/6."""
    gt_json, pred_json = _dataset(tmp_path)
    png = tmp_path / "pred" / f"{IMAGE}.png"
    idat, frame = Image.fromarray(to_rgb(PRED)), Image.fromarray(to_rgb(np.where(PRED == 9, 3, 9)))
    idat.save(png, save_all=True, append_images=[frame], default_image=True)
    assert b"acTL" in png.read_bytes()
    np.testing.assert_array_equal(decode_id_png_rgb(png.read_bytes()), to_rgb(PRED))
    assert pq_compute(gt_json, pred_json, workers=1)["All"]["pq"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("alpha", [0, 128])
def test_rgba_png_alpha_is_ignored_as_by_panopticapi(tmp_path, alpha):
    gt_json, pred_json = _dataset(tmp_path)
    rgb = to_rgb(PRED)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), alpha, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "pred" / f"{IMAGE}.png")
    assert pq_compute(gt_json, pred_json, workers=1)["All"]["pq"] == pytest.approx(5 / 6)


def _string_categories(data):
    for cat in data["categories"]:
        cat["id"] = str(cat["id"])


def _set(key, value, side="pred", index=0):
    return side, lambda d: _segments(d)[index].update({key: value})


# (which JSON, its edit, what the error says); panopticapi's behaviour on each in the comment.
REJECTED = {
    # a KeyError traceback; we scored "9" as 9: PQ 5/6
    "pred_id_string": (*_set("id", "9"), "the id of a predicted segment is '9', not an integer"),
    # a KeyError traceback; int(9.5) made it 9
    "pred_id_fraction": (*_set("id", 9.5), "the id of a predicted segment is 9.5, not an integer"),
    # silently PQ 0 (the string matches no PNG id); we gave 5/6
    "gt_id_string": (*_set("id", "5", "gt"), "the id of a ground-truth segment is '5'"),
    # silently PQ 0 (never equal to the prediction's 1); so did we
    "gt_category_string": (*_set("category_id", "1", "gt"),
                           "the category_id of ground-truth segment 5 is '1', not an integer"),
    # PQ 5/6 (string keys throughout); we said "unknown category_id 101" of a listed category
    "category_ids_strings": ("both", None, "a category id is '1', not an integer"),
    # "0" == 1 is false: a stuff class there; bool("0") made it a thing here
    "isthing_string": ("gt", lambda d: d["categories"][0].update(isthing="0"),
                       "category 1: 'isthing' must be 0 or 1, got '0'"),
    # stuff there (2 != 1), a thing here
    "isthing_two": ("gt", lambda d: d["categories"][0].update(isthing=2), "got 2"),
    # a KeyError traceback; we took 0
    "gt_iscrowd_missing": ("gt", lambda d: _segments(d)[1].pop("iscrowd"),
                           "ground-truth segment 70000 has no 'iscrowd' key"),
    # the rest: a traceback there and here
    "segments_info_null": ("pred", lambda d: d["annotations"][0].update(segments_info=None),
                           "annotations[0] needs a segments_info list"),
    "segment_not_a_dict": ("pred", lambda d: _segments(d).append(7), "a predicted segment is not a dict: 7"),
    "image_id_list": ("both", lambda d: d["annotations"][0].update(image_id=[1]), "image_id"),
    "file_name_null": ("pred", lambda d: d["annotations"][0].update(file_name=None), "a file_name string"),
    "area_string": (*_set("area", "24", "gt"), "ground-truth segment 5 has the area '24', not a number"),
    # there an IoU of inf: predicted 9 lies inside ground truth 5, so the union is 20 + 0 - 20 = 0
    "area_zero": (*_set("area", 0, "gt"), "ground-truth segment 5 has the area 0 in segments_info but 24 "
                                          "pixels in the ground-truth PNG"),
    # there an IoU of 20 (union 20 + 1 - 20 = 1), a PQ of 2000 % that was reported as it is
    "area_below_pixels": (*_set("area", 1, "gt"), "ground-truth segment 5 has the area 1 in segments_info "
                                                  "but 24 pixels in the ground-truth PNG; an area smaller "
                                                  "than the segment's pixels gives IoUs above 1"),
}


@pytest.mark.parametrize("case", REJECTED, ids=str)
def test_inputs_panopticapi_cannot_score_are_errors_naming_image_or_file(tmp_path, case):
    which, edit, expected = REJECTED[case]
    gt_json, pred_json = _dataset(tmp_path)
    if case == "category_ids_strings":
        _edit(gt_json, _string_categories)
        edit = lambda d: [s.update(category_id=str(s["category_id"])) for s in _segments(d)]  # noqa: E731
    for path in {"gt": [gt_json], "pred": [pred_json], "both": [gt_json, pred_json]}[which]:
        _edit(path, edit)
    with pytest.raises(PQInputError) as info:
        pq_compute(gt_json, pred_json, workers=1)
    message = str(info.value)
    assert expected in message
    assert IMAGE in message or str(gt_json) in message or str(pred_json) in message


def test_cli_names_a_malformed_annotation_without_traceback(tmp_path):
    """segments_info null was a TypeError traceback from the CLI."""
    gt_json, pred_json = _dataset(tmp_path)
    _edit(pred_json, lambda d: d["annotations"][0].update(segments_info=None))
    proc = run_in_group([sys.executable, "-m", "panfpn.evaluation.pq", "--gt-json", str(gt_json),
                         "--pred-json", str(pred_json), "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: prediction JSON {pred_json}: annotations[0] needs a segments_info")


@pytest.mark.parametrize("edit", ["float_ids", "bool_isthing", "crowd_true"])
def test_inputs_panopticapi_scores_give_its_number(tmp_path, edit):
    """JSON may write ids as 5.0 and isthing / iscrowd as booleans: panopticapi compares them with
    ==, so they score as 5, 1 and 1 there (a crowd ground truth is never matched: grass alone)."""
    gt_json, pred_json = _dataset(tmp_path)
    if edit == "float_ids":
        _edit(gt_json, lambda d: [s.update(id=float(s["id"]), category_id=float(s["category_id"]))
                                  for s in _segments(d)])
        _edit(pred_json, lambda d: [s.update(id=float(s["id"])) for s in _segments(d)])
    elif edit == "bool_isthing":
        _edit(gt_json, lambda d: [c.update(isthing=bool(c["isthing"])) for c in d["categories"]])
    else:
        _edit(gt_json, lambda d: _segments(d)[0].update(iscrowd=True))
    results = pq_compute(gt_json, pred_json, workers=1)
    expected = {"All": (5 / 6, 2 - (edit == "crowd_true")), "Stuff": (5 / 6, 1),
                "Things": (0.0, 0) if edit == "crowd_true" else (5 / 6, 1)}
    for split, (pq, n) in expected.items():
        assert (results[split]["pq"], results[split]["n"]) == (pytest.approx(pq), n), split


def test_result_is_bitwise_the_same_for_any_worker_count(tmp_path):
    """The pool summed every ``workers * 4``-th image, so the last bit of the sums varied with the
    worker count; the in-process path (one worker, under 64 images) summed image after image.
    Measured before on these cases, against workers=1: 70 images, 2 and 3 per-class entries
    differ with 2 and 3 workers, and Stuff's PQ by 5.6e-17 with 3; 40 images, All's PQ with 3."""
    gt_json, pred_json, _ = write_cases(tmp_path, 2, 70)
    results = [pq_compute(gt_json, pred_json, workers=w) for w in (1, 2, 3)]
    assert results[0] == results[1] == results[2]
    few = tmp_path / "few"
    gt_json, pred_json, _ = write_cases(few, 2, 40)
    assert pq_compute(gt_json, pred_json, workers=1) == pq_compute(gt_json, pred_json, workers=3)


def _resave(path, how):
    """Write the colours of the PNG at ``path`` again, in another legitimate PNG encoding."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if how == "rgba":
        Image.fromarray(np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)]), "RGBA").save(path)
    elif how == "trns":
        Image.fromarray(rgb).save(path, transparency=tuple(int(v) for v in rgb[0, 0]))
    elif how == "apng":
        Image.fromarray(rgb).save(path, save_all=True, append_images=[Image.fromarray(255 - rgb)],
                                  default_image=True)
    else:  # ancillary chunks: tEXt, gAMA (sRGB's 1/2.2) and an ICC profile
        from PIL import ImageCms, PngImagePlugin
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "ids")
        info.add(b"gAMA", (45455).to_bytes(4, "big"))
        icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        Image.fromarray(rgb).save(path, pnginfo=info, icc_profile=icc)


def test_same_numbers_as_panopticapi_on_other_png_encodings(tmp_path):
    """Generated cases with a quarter of their PNGs re-encoded (RGBA with alpha 0, a tRNS colour,
    an APNG with a hidden IDAT image, ancillary chunks) against panopticapi itself, when importable
    (COCO's panopticapi is not on PyPI: put a checkout on PYTHONPATH). It runs in a child process:
    its pool is never closed."""
    pytest.importorskip("panopticapi.evaluation", reason="COCO's panopticapi is not installed")
    gt_json, pred_json, _ = write_cases(tmp_path, 11, 24)
    hows = ["rgba", "trns", "apng", "chunks"]
    for i in range(0, 24, 2):
        folder = tmp_path / ("gt" if i % 4 else "pred")
        _resave(folder / f"{i}.png", hows[(i // 2) % 4])
    script = ("import json, sys, contextlib\n"
              "from panopticapi.evaluation import pq_compute\n"
              "with contextlib.redirect_stdout(sys.stderr):\n"
              "    r = pq_compute(sys.argv[1], sys.argv[2])\n"
              "print(json.dumps(r))\n")
    proc = run_in_group([sys.executable, "-c", script, str(gt_json), str(pred_json)],
                        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout)
    ours = pq_compute(gt_json, pred_json, workers=1)
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == theirs[split]["n"]
        for m in ("pq", "sq", "rq"):
            assert ours[split][m] == pytest.approx(theirs[split][m], abs=1e-12), (split, m)
    for cat, entry in theirs["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert ours["per_class"][int(cat)][m] == pytest.approx(entry[m], abs=1e-12), (cat, m)


def test_forty_thousand_segments_on_both_sides(tmp_path):
    """A 200x200 image with 40,000 one-pixel segments in the ground truth and the prediction (the
    same map): counting them took 40,001^2 float64 cells (12 GB, a MemoryError) where panopticapi
    scores them. Even k: person, odd k: grass; every fifth grass segment is predicted as a person
    (a grass FN and a person FP), the others match with IoU 1: person 20000 TP and 4000 FP (PQ
    20000 / 22000), grass 16000 TP and 4000 FN (PQ 16000 / 18000)."""
    import tracemalloc

    n = 40_000
    ids = np.random.default_rng(5).choice(np.arange(1, 1 << 24), n, replace=False)
    id_map = ids.reshape(200, 200)
    k = np.arange(n)
    gt_cat = np.where(k % 2 == 0, 1, 101)
    pred_cat = np.where(k % 10 == 1, 1, gt_cat)
    gt_segments = [{"id": int(i), "category_id": int(c), "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]}
                   for i, c in zip(ids, gt_cat)]
    pred_segments = [{"id": int(i), "category_id": int(c)} for i, c in zip(ids, pred_cat)]
    gt_json = write_panoptic(tmp_path, "gt", [(IMAGE, id_map, gt_segments)], CATEGORIES)
    pred_json = write_panoptic(tmp_path, "pred", [(IMAGE, id_map, pred_segments)])
    tracemalloc.start()
    try:
        results = pq_compute(gt_json, pred_json, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    person, grass = results["per_class"][1], results["per_class"][101]
    assert (person["tp"], person["fp"], person["fn"], person["pq"]) == (20000, 4000, 0, 20000 / 22000)
    assert (grass["tp"], grass["fp"], grass["fn"], grass["pq"]) == (16000, 0, 4000, 16000 / 18000)
    assert results["All"]["pq"] == (20000 / 22000 + 16000 / 18000) / 2
    assert peak < 256 << 20, f"{peak / 2**20:.0f} MB"
