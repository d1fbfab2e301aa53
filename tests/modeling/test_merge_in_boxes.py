"""The exported pipeline's in-box paste and merge (deploy/pipeline.py ``paste_in_boxes``,
deploy/merge_static.py ``merge_in_boxes``) against the full-size forms they replace in the ONNX graph
(``paste_masks``, ``merge_static``, which ``torch.export`` keeps), and the per-level RoI pooling."""

import dataclasses

import pytest
import torch
from torchvision.ops import roi_align

from panfpn.deploy.merge_static import merge_in_boxes, merge_static
from panfpn.deploy.pipeline import paste_in_boxes, paste_masks
from panfpn.deploy.static_ops import multilevel_roi_align
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn.roi_ops import MultiLevelRoIAlign

H, W, K, M = 37, 53, 9, 6
RULES = {
    "detectron2": dataclasses.replace(MergeThresholds.detectron2(), score_thresh=0.3, stuff_area=20),
    "textbook": dataclasses.replace(MergeThresholds.textbook(), score_thresh=0.3, stuff_area=20),
    "min_remaining": dataclasses.replace(MergeThresholds.detectron2(), score_thresh=0.3, overlap_thresh=None,
                                         thing_min_remaining_area=30, stuff_area=1),
}


def _detections(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask probabilities, XYXY boxes (large and overlapping, on the borders, empty, padding rows of
    zeros), descending scores (the last two padding at -1), labels and semantic labels."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand((K, M, M), generator=g)
    xy = torch.rand((K, 2), generator=g) * torch.tensor([W, H]) * 0.7
    wh = torch.rand((K, 2), generator=g) * torch.tensor([W, H]) * 0.8 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    boxes = torch.minimum(boxes, torch.tensor([W, H, W, H], dtype=torch.float))
    boxes[1] = torch.tensor([0.0, 0.0, W, H])  # the whole image
    boxes[3] = torch.tensor([10.0, 5.0, 10.0, 20.0])  # no width
    boxes[-2:], probs[-2:] = 0.0, 0.0  # padding slots
    scores = torch.sort(torch.rand(K, generator=g), descending=True).values
    scores[-2:] = -1.0
    labels = torch.randint(0, 3, (K,), generator=g)
    sem = torch.randint(0, 5, (H, W), generator=g)
    return probs, boxes, scores, labels, sem


@pytest.mark.parametrize("seed", range(4))
def test_paste_in_boxes_equals_full_paste(seed):
    probs, boxes, *_ = _detections(seed)
    image = torch.zeros((H, W, 3), dtype=torch.uint8)
    crops, spans = paste_in_boxes(probs, boxes, image)
    placed = torch.zeros((K, H, W), dtype=torch.bool)
    for i, (crop, (y0, y1, x0, x1)) in enumerate(zip(crops, spans.tolist())):
        assert crop.shape == (y1 - y0, x1 - x0)
        placed[i, y0:y1, x0:x1] = crop
    full = paste_masks(probs, boxes, image)
    assert torch.equal(placed, full)
    assert full[1].any() and not full[3].any() and not full[-2:].any()
    assert spans[3].tolist() == [0, 0, 0, 0] and spans[-1].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rules", sorted(RULES))
def test_merge_in_boxes_equals_merge_static(seed, rules):
    probs, boxes, scores, labels, sem = _detections(seed)
    image = torch.zeros((H, W, 3), dtype=torch.uint8)
    kwargs = {"thing_sem_labels": [0], "num_sem_classes": 5, "merge": RULES[rules]}
    want_map, want = merge_static(paste_masks(probs, boxes, image), scores, labels, sem, **kwargs)
    got_map, got = merge_in_boxes(*paste_in_boxes(probs, boxes, image), scores, labels, sem, **kwargs)
    assert got_map.dtype == want_map.dtype and torch.equal(got_map, want_map)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    thing_ids = want["id"][want["isthing"]]
    assert 0 < len(thing_ids) < K - 2  # some instances kept, some dropped by the rules or the threshold


def test_roi_pooling_takes_each_level_once():
    # Each RoI's row equals torchvision's RoIAlign of that RoI on its own level alone.
    g = torch.Generator().manual_seed(0)
    pooler = MultiLevelRoIAlign(7, sampling_ratio=0)
    maps = [torch.randn((1, 3, 256 // 2 ** i, 320 // 2 ** i), generator=g) for i in range(4)]
    xy = torch.rand((40, 2), generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand((40, 2), generator=g) * 600 + 1], 1)
    level = pooler.level_of(torch.cat([torch.zeros((40, 1)), boxes], 1))
    assert len(level.unique()) == 4
    got = multilevel_roi_align(maps, boxes, pooler)
    for i, box in enumerate(boxes):
        lvl = int(level[i])
        roi = torch.cat([torch.zeros(1), box])[None]
        want = roi_align(maps[lvl], roi, 7, spatial_scale=pooler.scales[lvl], sampling_ratio=0, aligned=True)
        assert torch.equal(got[i], want[0])
