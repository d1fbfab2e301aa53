"""Segment areas and boxes: the one id-map definition (panoptic_io.segment_areas_boxes, used by the
prediction writer and the synthetic generator) equals a per-pixel count on random id maps, and the
training targets' boxes of masks (targets.masks_to_boxes, XYXY) are the same boxes."""

from __future__ import annotations

import numpy as np
import torch

from panfpn.data.panoptic_io import segment_areas_boxes
from panfpn.data.targets import masks_to_boxes


def _random_id_maps(seed: int = 0, n: int = 40):
    """Piecewise-constant maps (rectangles and scattered pixels) of 1..40 x 1..40 pixels with
    ids up to 2^24, void included; single rows, single columns and single pixels too."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (1, 1) if k == 0 else (int(rng.integers(1, 41)), int(rng.integers(1, 41)))
        m = np.zeros((h, w), np.int64)
        for _ in range(int(rng.integers(1, 8))):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[y0:int(rng.integers(y0 + 1, h + 1)), x0:int(rng.integers(x0 + 1, w + 1))] = rng.integers(1, 1 << 24)
        noise = rng.random((h, w)) < 0.05
        m[noise] = rng.integers(0, 5, int(noise.sum()))  # scattered pixels: segments in pieces
        yield m.astype(rng.choice([np.int32, np.int64, np.uint32]))


def _per_pixel(m: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    out = {}
    for seg_id in np.unique(m).tolist():
        ys, xs = np.nonzero(m == seg_id)
        out[seg_id] = (ys.size, [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    return out


def test_all_representations_agree_on_random_id_maps():
    for m in _random_id_maps():
        expected = _per_pixel(m)
        assert segment_areas_boxes(m) == expected
        ids = sorted(expected)
        masks = torch.from_numpy(m.astype(np.int64))[None] == torch.tensor(ids)[:, None, None]
        xyxy = masks_to_boxes(masks)
        assert xyxy.dtype == torch.float32
        xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1).long().tolist()
        assert xywh == [expected[i][1] for i in ids]


def test_empty_map():
    assert segment_areas_boxes(np.zeros((0, 7), np.int32)) == {}
    assert segment_areas_boxes(np.zeros((3, 0), np.int32)) == {}
    assert masks_to_boxes(torch.zeros(0, 3, 4, dtype=torch.bool)).shape == (0, 4)
