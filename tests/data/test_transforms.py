"""Joint transforms keep image, masks, boxes and semantic labels aligned."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.targets import masks_to_boxes, panoptic_targets
from panfpn.data.transforms import (Compose, RandomCrop, RandomHorizontalFlip, ResizeShortestEdge,
                                    resize_nearest, shortest_edge_size)

META = DatasetMetadata.from_coco_categories([
    {"id": 5, "name": "box", "isthing": 1},
    {"id": 9, "name": "disc", "isthing": 1},
    {"id": 40, "name": "ground", "isthing": 0},
])
RED = torch.tensor([255, 0, 0], dtype=torch.uint8)
GROUND, BOX, DISC = 1000, 70000, 300  # segment ids (70000 > 2^16 exercises wide ids)
SEGMENTS = [{"id": GROUND, "category_id": 40, "iscrowd": 0},
            {"id": BOX, "category_id": 5, "iscrowd": 0},
            {"id": DISC, "category_id": 9, "iscrowd": 0}]


def _scene(h: int = 60, w: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """A red rectangle (rows 10..29, cols 20..49) on grey ground and a small blue square at the
    top-left corner (rows 0..4, cols 0..4)."""
    image = torch.full((3, h, w), 128, dtype=torch.uint8)
    id_map = torch.full((h, w), GROUND, dtype=torch.int32)
    image[:, 10:30, 20:50] = RED[:, None, None]
    id_map[10:30, 20:50] = BOX
    image[:, 0:5, 0:5] = torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None]
    id_map[0:5, 0:5] = DISC
    return image, id_map


def _red_box(image: torch.Tensor) -> list[float]:
    """Tight XYXY box of the clearly red pixels of an image."""
    red = (image[0] > 200) & (image[1] < 60) & (image[2] < 60)
    return masks_to_boxes(red[None])[0].tolist()


def _check_aligned(image: torch.Tensor, id_map: torch.Tensor, tol: float = 0.0) -> dict:
    """Targets of the id map agree with the image's red pixels (within ``tol`` pixels, for
    non-integer scales where bilinear blending shifts the thresholded edge)."""
    t = panoptic_targets(id_map, SEGMENTS, META)
    inst = t["instances"]
    k = inst["labels"].tolist().index(META.thing_label(5))
    assert torch.allclose(inst["boxes"][k], torch.tensor(_red_box(image)), atol=tol, rtol=0)
    assert torch.equal(inst["masks"][k].bool(), id_map == BOX)
    assert torch.equal(t["sem_seg"], torch.where(id_map == GROUND, 0, 1))  # stuff 0, 'thing' 1
    return t


def test_identity_targets_and_box():
    image, id_map = _scene()
    t = _check_aligned(image, id_map)
    assert t["instances"]["boxes"].tolist() == [[20, 10, 50, 30], [0, 0, 5, 5]]
    assert t["instances"]["labels"].tolist() == [0, 1]


def test_flip_moves_box():
    image, id_map = _scene()
    image, id_map = RandomHorizontalFlip(prob=1.0)(image, id_map)
    t = _check_aligned(image, id_map)
    assert t["instances"]["boxes"][0].tolist() == [80 - 50, 10, 80 - 20, 30]
    same = RandomHorizontalFlip(prob=0.0)(*_scene())
    assert torch.equal(same[1], _scene()[1])


def test_resize_scales_box():
    image, id_map = _scene()
    image, id_map = ResizeShortestEdge([120], max_size=1000)(image, id_map)
    assert id_map.shape == (120, 160) and image.shape == (3, 120, 160)
    t = _check_aligned(image, id_map)
    assert t["instances"]["boxes"][0].tolist() == [40, 20, 100, 60]
    assert set(torch.unique(id_map).tolist()) == {GROUND, BOX, DISC}  # nearest: no blended ids


def _detectron2_output_shape(h, w, short, max_size):
    """Detectron2's ResizeShortestEdge.get_output_shape arithmetic, step by step: the shorter side
    set to ``short``, the longer scaled; both scaled again past ``max_size``; int(x + 0.5)."""
    size = short * 1.0
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def test_resize_size_equals_detectron2_on_rounding_ties():
    # 91x182 at (800, 1333): the short side is 666.5 in exact arithmetic; Detectron2's float order
    # gives 666.4999..., so 666 (one scale factor straight from the original size gave 667).
    from panfpn.deploy.resize import shortest_edge_size as deploy_size

    assert shortest_edge_size(91, 182, 800, 1333) == (666, 1333)
    assert shortest_edge_size(182, 91, 800, 1333) == (1333, 666)
    ties = []
    for short, max_size in ((800, 1333), (640, 1333), (512, 1024), (1024, 2048)):
        for h in range(2, 1300, 3):
            for w in range(h, 2100, 11):
                for a, b in ((h, w), (w, h)):
                    want = tuple(max(1, v) for v in _detectron2_output_shape(a, b, short, max_size))
                    assert shortest_edge_size(a, b, short, max_size) == want, (a, b, short, max_size)
                    if want != (max(1, int(a * min(short / min(a, b), max_size / max(a, b)) + 0.5)),
                                max(1, int(b * min(short / min(a, b), max_size / max(a, b)) + 0.5))):
                        ties.append((a, b, short, max_size, want))
    assert len(ties) > 10  # the grid holds sizes where the order of the float steps matters
    for a, b, short, max_size, want in ties[::10]:  # the export's versions: Python ints, int64 tensors
        assert deploy_size(a, b, short, max_size) == want
        out = deploy_size(torch.tensor(a), torch.tensor(b), short, max_size)
        assert (int(out[0]), int(out[1])) == want


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (7, 9), (31, 33), (1, 500), (500, 1), (20, 3000), (3000, 20),
                                 (1, 3000), (3000, 1), (2, 5333), (10000, 10000), (10000, 9999)])
def test_resize_of_tiny_and_strip_images_is_detectron2s(h, w):
    # Detectron2's sizes wherever they are >= 1; where its max_size scaling rounds a side to 0 (a
    # ratio past 2 * max_size : 1, e.g. 1x3000 at max_size 1333) it would fail, here the side is 1.
    # The resize itself gives that size (image and id map), eager and the export's float64 version.
    from panfpn.deploy.resize import shortest_edge_size as deploy_size

    for short, max_size in ((800, 1333), (128, 320), (32, 64)):
        d2 = _detectron2_output_shape(h, w, short, max_size)
        want = tuple(max(1, v) for v in d2)
        assert shortest_edge_size(h, w, short, max_size) == want
        out = deploy_size(torch.tensor(h), torch.tensor(w), short, max_size)
        assert (int(out[0]), int(out[1])) == want
        if min(h, w) == 1 and max(h, w) == 3000 and max_size == 1333:
            assert 0 in d2  # the case Detectron2 cannot resize
        if h * w <= 3000 * 20:
            image, ids = ResizeShortestEdge([short], max_size=max_size)(
                torch.zeros((3, h, w), dtype=torch.uint8), torch.zeros((h, w), dtype=torch.int32))
            assert tuple(image.shape[1:]) == tuple(ids.shape) == want


def test_resize_respects_max_size_and_range():
    assert shortest_edge_size(60, 80, 120, 1000) == (120, 160)
    assert shortest_edge_size(60, 200, 120, 300) == (90, 300)
    torch.manual_seed(0)
    t = ResizeShortestEdge([30, 40], max_size=1000, sample_style="range")
    shorts = {min(t(*_scene())[1].shape) for _ in range(40)}
    assert shorts <= set(range(30, 41)) and len(shorts) > 3
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge([1, 2], sample_style="uniform")
    with pytest.raises(ValueError, match="two values"):
        ResizeShortestEdge([1, 2, 3], sample_style="range")


def test_crop_recomputes_boxes_and_drops_emptied_instances():
    torch.manual_seed(0)
    crop = RandomCrop(25, 30)
    dropped = clipped = 0
    for _ in range(30):
        image, id_map = crop(*_scene())
        assert id_map.shape == (25, 30) and image.shape == (3, 25, 30)
        t = panoptic_targets(id_map, SEGMENTS, META)
        labels = t["instances"]["labels"].tolist()
        assert (1 in labels) == bool((id_map == DISC).any())
        dropped += 1 not in labels
        if (id_map == BOX).any():
            _check_aligned(image, id_map)
            box = t["instances"]["boxes"][labels.index(0)]
            clipped += int(box[2] - box[0]) < 30 or int(box[3] - box[1]) < 20
        assert t["instances"]["masks"].flatten(1).any(1).all()  # no empty masks kept
    assert dropped > 0 and clipped > 0


def test_crop_larger_than_image_keeps_it():
    image, id_map = _scene()
    out = RandomCrop(100, 100)(image, id_map)
    assert torch.equal(out[1], id_map)


def test_compose_resize_crop_flip_stays_aligned():
    torch.manual_seed(1)
    t = Compose([ResizeShortestEdge([50, 90], max_size=500, sample_style="range"),
                 RandomCrop(40, 60), RandomHorizontalFlip(0.5)])
    for _ in range(20):
        image, id_map = t(*_scene())
        if (id_map == BOX).sum() > 4:
            _check_aligned(image, id_map, tol=1.0)


def test_transforms_follow_torch_seed():
    t = Compose([ResizeShortestEdge([40, 50, 60, 70]), RandomCrop(30, 30), RandomHorizontalFlip()])
    torch.manual_seed(5)
    a = [t(*_scene())[1] for _ in range(5)]
    torch.manual_seed(5)
    b = [t(*_scene())[1] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_resize_nearest_integer_factor_repeats():
    m = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    assert torch.equal(resize_nearest(m, 4, 6), m.repeat_interleave(2, 0).repeat_interleave(2, 1))


@pytest.mark.parametrize("h,w,short,max_size", [(427, 640, 128, 320), (427, 640, 32, 64), (480, 640, 800, 1333),
                                                 (333, 500, 640, 1333), (1, 500, 800, 1333), (500, 1, 800, 1333),
                                                 (20, 3000, 128, 320), (7, 9, 800, 1333), (1, 1, 32, 64)])
def test_resize_nearest_picks_the_pixels_detectron2_does(h, w, short, max_size):
    # Detectron2 resizes the panoptic PNG (RGB-encoded ids) with Pillow's NEAREST
    # (ResizeTransform.apply_segmentation). Before: the ids were sampled at (i + 0.5) * H / height
    # (multiplied), Pillow steps by adding: on exact ties other pixels were picked, e.g. 19 % of a
    # 427x640 map resized to 128x192 (every third column one pixel off), 0.07 % of 1x500 -> 3x1333.
    from PIL import Image

    ids = np.random.default_rng(h * w).integers(0, 2**24, (h, w)).astype(np.int32)
    out_h, out_w = shortest_edge_size(h, w, short, max_size)
    rgb = (ids[..., None] >> np.array([0, 8, 16]) & 255).astype(np.uint8)
    d2 = np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.NEAREST)).astype(np.int32)
    want = d2[..., 0] + 256 * d2[..., 1] + 65536 * d2[..., 2]
    assert np.array_equal(resize_nearest(torch.from_numpy(ids), out_h, out_w).numpy(), want)


def test_shape_mismatch_is_rejected():
    image, id_map = _scene()
    with pytest.raises(ValueError, match="same size"):
        RandomHorizontalFlip(1.0)(image, id_map[:-1])


PIL_MAJOR = int(__import__("PIL").__version__.split(".")[0])


@pytest.mark.parametrize("size", [(360, 640), (333, 500), (1000, 37), (64, 64), (37, 1000)])
def test_uint8_resize_equals_pillow_bilinear_as_detectron2_resizes(size):
    # Detectron2's ResizeTransform.apply_image resizes a uint8 HWC array with
    # PIL.Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR) (ResizeShortestEdge's default
    # interpolation). Before: torchvision's uint8 kernel (int16 weights, lower precision) left ~18 % of
    # a COCO photo's bytes 1 off, so the network saw another input than Detectron2's.
    from PIL import Image

    from panfpn.data.transforms import ResizeShortestEdge, shortest_edge_size
    from panfpn.deploy.resize import resize_uint8

    g = torch.Generator().manual_seed(sum(size))
    h, w = size
    smooth = (torch.linspace(0, 255, w)[None, None, :] * torch.linspace(0.2, 1, h)[None, :, None]).expand(3, h, w)
    noise = torch.randint(-20, 21, (3, h, w), generator=g)
    image = (smooth + noise).clamp(0, 255).to(torch.uint8)
    for short, longest in ((800, 1333), (128, 320), (47, 100)):
        new_h, new_w = shortest_edge_size(h, w, short, longest)
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        want = np.asarray(Image.fromarray(hwc).resize((new_w, new_h), Image.BILINEAR)).transpose(2, 0, 1)
        got, _ = ResizeShortestEdge(short, longest)(image, torch.zeros(h, w, dtype=torch.int64))
        assert np.array_equal(got.numpy(), want), (size, short)
        # the graph's resize, its passes in the installed Pillow's order: (1000, 37) is shrunk
        # vertical pass first by Pillow >= 13 (before, always horizontal first: ~1/3 of the bytes 1 off)
        assert np.array_equal(resize_uint8(image, new_h, new_w).numpy(), want), (size, short)


def test_pillow_pass_order_rule_at_its_boundary():
    # Pillow >= 13 (src/libImaging/Resample.c) runs the vertical pass first iff the height shrinks
    # and by more than twice as many pixels as the width; a width that grows counts negative.
    from panfpn.deploy.resize import pillow_runs_vertical_first

    assert not pillow_runs_vertical_first(100, 50, 80, 40)  # 20 == 2 * 10: horizontal first
    assert pillow_runs_vertical_first(100, 50, 79, 40)  # 21 > 2 * 10
    assert pillow_runs_vertical_first(100, 50, 99, 60)  # the width grows: any height shrink
    assert pillow_runs_vertical_first(100, 50, 80, 50)  # only the height changes
    assert not pillow_runs_vertical_first(100, 50, 100, 40)  # the height keeps its size
    assert not pillow_runs_vertical_first(100, 50, 120, 200)  # both grow
    assert not pillow_runs_vertical_first(100, 50, 60, 30)  # 40 == 2 * 20


@pytest.mark.skipif(PIL_MAJOR < 13, reason="the size-dependent pass order is Pillow >= 13's")
@pytest.mark.parametrize("out_size, vertical_first", [((80, 40), False), ((79, 40), True), ((99, 60), True),
                                                      ((60, 30), False), ((59, 30), True), ((80, 50), True),
                                                      ((100, 40), False)])
def test_uint8_resize_follows_pillow_13_pass_order(out_size, vertical_first):
    # At the rule's boundary (a height shrink of exactly 2x the width's, and one pixel more), with a
    # growing width, and with one axis unchanged (Pillow skips that pass; here it is the identity),
    # eager and traced (both orders in the graph, the other one on 0 rows) give Pillow's bytes. Where both axes
    # change, the other order gives other bytes, so each case tells the orders apart.
    from PIL import Image

    from panfpn.deploy.resize import HORIZONTAL_FIRST, PILLOW13, pillow_runs_vertical_first, resize_uint8, size_of

    assert pillow_runs_vertical_first(100, 50, *out_size) == vertical_first
    image = torch.randint(0, 256, (3, 100, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    want = np.stack([np.asarray(Image.fromarray(p).resize(out_size[::-1], Image.BILINEAR)) for p in image.numpy()])
    assert np.array_equal(resize_uint8(image, *out_size).numpy(), want)
    assert np.array_equal(resize_uint8(image, *out_size, PILLOW13).numpy(), want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and constant notes
        traced = torch.jit.trace(lambda x: resize_uint8(x, size_of(x, 1) - 100 + out_size[0],
                                                        size_of(x, 2) - 50 + out_size[1]), image)
    assert np.array_equal(traced(image).numpy(), want)
    old = resize_uint8(image, *out_size, HORIZONTAL_FIRST).numpy()
    assert np.array_equal(old, want) == (not vertical_first or 100 in out_size or 50 in out_size)
