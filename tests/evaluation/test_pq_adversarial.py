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

import numpy as np
import pytest
from PIL import Image

from panfpn.data.panoptic_io import decode_id_png_rgb
from panfpn.evaluation import pq_compute
from pq_case_gen import CATEGORIES, to_rgb, write_panoptic

IMAGE = "frankfurt_000000_000294"
GT = np.where(np.arange(8)[None, :] < 4, 5, 70000).repeat(6, 0)
PRED = np.where(GT == 5, 9, 3)
PRED[0] = 0
GT_SEGMENTS = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 24, "bbox": [0, 0, 4, 6]},
               {"id": 70000, "category_id": 101, "iscrowd": 0, "area": 24, "bbox": [4, 0, 4, 6]}]
PRED_SEGMENTS = [{"id": 9, "category_id": 1}, {"id": 3, "category_id": 101}]


def _dataset(tmp_path, gt_segments=GT_SEGMENTS, pred_segments=PRED_SEGMENTS, categories=CATEGORIES):
    gt_json = write_panoptic(tmp_path, "gt", [(IMAGE, GT, gt_segments)], categories)
    pred_json = write_panoptic(tmp_path, "pred", [(IMAGE, PRED, pred_segments)])
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
