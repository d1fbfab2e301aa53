"""Panoptic overlays: blended colours on the right pixels, void untouched, outlines, labels."""

import numpy as np
import pytest

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.visualize import (boundary_mask, category_color, label_positions, panoptic_overlay,
                                    segment_colors, segment_index, side_by_side)

CATS = [
    {"id": 3, "name": "disc", "isthing": 1, "color": [200, 40, 40]},
    {"id": 7, "name": "box", "isthing": 1, "color": [40, 40, 200]},
    {"id": 101, "name": "grass", "isthing": 0, "color": [40, 180, 40]},
    {"id": 130, "name": "nocolor", "isthing": 0},
]
META = DatasetMetadata.from_coco_categories(CATS)


def _scene():
    """24x32 image: grass on the left half, two discs and a box on the right, void elsewhere."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    id_map = np.zeros((24, 32), dtype=np.int32)
    id_map[:, :12] = 5           # grass
    id_map[2:10, 16:24] = 9      # disc #1
    id_map[12:20, 16:24] = 11    # disc #2
    id_map[4:8, 26:30] = 2       # box
    id_map[20:, 28:] = 77        # an id no segment lists: drawn as void
    segments = [{"id": 9, "category_id": 3, "score": 0.9}, {"id": 11, "category_id": 3, "score": 0.8},
                {"id": 2, "category_id": 7, "score": 0.7}, {"id": 5, "category_id": 101}]
    return image, id_map, segments


def test_segment_pixels_get_their_colour_blend_and_void_stays_the_image():
    image, id_map, segments = _scene()
    alpha = 0.6
    out = panoptic_overlay(image, id_map, segments, META, alpha=alpha, outline=False, labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    colors = segment_colors(segments, META)
    for seg in segments:
        sel = id_map == seg["id"]
        expected = (1 - alpha) * image[sel].astype(np.float64) + alpha * np.array(colors[seg["id"]])
        assert np.abs(out[sel].astype(np.float64) - expected).max() <= 1.0, seg
    untouched = ~np.isin(id_map, [s["id"] for s in segments])
    assert untouched.sum() > 0
    np.testing.assert_array_equal(out[untouched], image[untouched])
    # stuff and the first instance of a class wear the category colour itself
    assert colors[5] == (40, 180, 40) and colors[9] == (200, 40, 40)


def test_instances_of_one_class_get_distinct_shades():
    segs = [{"id": i + 1, "category_id": 3} for i in range(12)]
    colors = segment_colors(segs, META)
    assert len(set(colors.values())) == 12
    # every shade stays recognisably the class colour: red channel dominates
    assert all(c[0] > c[1] and c[0] > c[2] for c in colors.values())


def test_category_without_colour_gets_a_stable_nonblack_colour():
    cat = META.category(130)
    assert category_color(cat) == category_color(cat) and max(category_color(cat)) > 100


def test_outlines_at_boundaries_only():
    image, id_map, segments = _scene()
    out = panoptic_overlay(image, id_map, segments, META, outline=True, labels=False, outline_width=1)
    plain = panoptic_overlay(image, id_map, segments, META, outline=False, labels=False)
    edge = boundary_mask(id_map, 1)
    assert (out[edge] == 255).all()
    np.testing.assert_array_equal(out[~edge], plain[~edge])
    # the left edge of disc #1 (column 16, rows 2..9) and the grass/void border (column 12)
    assert edge[2:10, 16].all() and edge[:, 12].all()
    # interiors are not outlined
    assert not edge[3:9, 17:23].any() and not edge[:, :12].any()


def test_boundary_width_grows_the_line():
    id_map = np.zeros((20, 20), dtype=np.int32)
    id_map[:, 10:] = 1
    one, three = boundary_mask(id_map, 1), boundary_mask(id_map, 3)
    assert one.sum() == 20 and one[:, 10].all()
    assert three.sum() == 20 * 5 and three[:, 8:13].all()


def test_labels_are_drawn_inside_their_segments():
    image = np.zeros((60, 160, 3), dtype=np.uint8)
    id_map = np.zeros((60, 160), dtype=np.int32)
    id_map[10:50, 70:150] = 4
    segments = [{"id": 4, "category_id": 7, "score": 0.93}]
    plain = panoptic_overlay(image, id_map, segments, META, outline=False, labels=False)
    out = panoptic_overlay(image, id_map, segments, META, outline=False, labels=True)
    changed = np.nonzero((out != plain).any(-1))
    assert len(changed[0]) > 0
    assert changed[1].min() >= 70 - 5 and changed[1].max() < 150 + 5  # around the box, not elsewhere
    assert (out[changed].min(-1) > 220).any()  # white (antialiased) text


def test_label_position_falls_inside_a_concave_segment():
    # a U shape: its centroid lies in the hole
    pos = np.ones((30, 30), dtype=np.int64)
    pos[:, :5] = 0
    pos[:, 25:] = 0
    pos[25:, :] = 0
    x, y, area = label_positions(pos, 1)
    assert area[0] == (pos == 0).sum()
    assert pos[y[0], x[0]] == 0


def test_segment_index_marks_unlisted_ids():
    id_map = np.array([[0, 5, 9], [9, 12, 5]])
    pos = segment_index(id_map, np.array([5, 9]))
    np.testing.assert_array_equal(pos, [[2, 0, 1], [1, 2, 0]])


def test_size_mismatch_and_bad_dtype_raise():
    image, id_map, segments = _scene()
    with pytest.raises(ValueError, match="differs"):
        panoptic_overlay(image[:10], id_map, segments, META)
    with pytest.raises(ValueError, match="uint8"):
        panoptic_overlay(image.astype(np.float32), id_map, segments, META)


def test_side_by_side_places_both_views():
    a = np.full((10, 8, 3), 10, dtype=np.uint8)
    b = np.full((12, 6, 3), 20, dtype=np.uint8)
    out = side_by_side(a, b, gap=3)
    assert out.shape == (12, 17, 3)
    assert (out[:10, :8] == 10).all() and (out[:, 11:] == 20).all() and (out[:, 8:11] == 255).all()
    titled = side_by_side(a, b, gap=3, titles=("ground truth", "prediction"))
    band = titled.shape[0] - 12
    assert band > 0 and (titled[band:] == out).all()
    assert (titled[:band] < 255).any()  # the titles are written
