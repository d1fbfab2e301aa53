"""Mask2Former's per-image inference: panoptic against a query-by-query sequential reference (the
official rules), semantic and instance outputs against plain loops."""

import pytest
import torch

from panfpn.modeling.mask2former.classes import build_class_space
from panfpn.modeling.mask2former.inference import (InferenceConfig, instance_inference, panoptic_inference,
                                                   semantic_inference)

SPACE = build_class_space(3, 4, [3])  # things 0..2 -> classes 0..2; stuff labels 0..2 -> classes 3..5


def sequential_panoptic(logits, masks, space, cfg):
    """The official loop: visit the kept queries in order; each takes the pixels where it wins the
    score-weighted argmax and its own probability is >= 0.5, unless those pixels are too few."""
    probs = logits.softmax(-1)
    scores, labels = probs.max(-1)
    keep = (labels != space.num_classes) & (scores > cfg.object_mask_threshold)
    scores, labels, m = scores[keep], labels[keep], masks[keep].sigmoid()
    id_map = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    segments, stuff_ids = [], {}
    if m.shape[0] == 0:
        return id_map, segments
    owner = (scores[:, None, None] * m).argmax(0)
    for k in range(m.shape[0]):
        c = int(labels[k])
        won = owner == k
        own = m[k] >= 0.5
        mask = won & own
        if won.sum() == 0 or own.sum() == 0 or mask.sum() == 0:
            continue
        if won.sum() / own.sum() < cfg.overlap_threshold:
            continue
        if not space.isthing[c] and c in stuff_ids:
            id_map[mask] = stuff_ids[c]
            continue
        seg = len(segments) + 1
        id_map[mask] = seg
        if not space.isthing[c]:
            stuff_ids[c] = seg
        segments.append({"id": seg, "isthing": space.isthing[c], "category": space.label[c]})
    return id_map, segments


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresholds", [(0.8, 0.8), (0.3, 0.5), (0.0, 0.0)])
def test_panoptic_equals_the_sequential_reference(seed, thresholds):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, SPACE.num_classes + 1, generator=g) * 4
    masks = torch.randn(12, 3, 5, generator=g).repeat_interleave(6, 1).repeat_interleave(6, 2) * 3
    masks += torch.randn(masks.shape, generator=g)
    cfg = InferenceConfig(object_mask_threshold=thresholds[0], overlap_threshold=thresholds[1])
    id_map, segments = panoptic_inference(logits, masks, SPACE, cfg)
    want_map, want_segments = sequential_panoptic(logits, masks, SPACE, cfg)
    assert torch.equal(id_map, want_map)
    assert [{k: s[k] for k in ("id", "isthing", "category")} for s in segments] == want_segments
    for s in segments:
        assert s["area"] == int((id_map == s["id"]).sum()) > 0
        assert (s["score"] is None) == (not s["isthing"])


def test_two_stuff_queries_of_one_class_make_one_segment():
    logits = torch.full((2, SPACE.num_classes + 1), -10.0)
    logits[:, 4] = 10.0  # both queries: stuff class 4 = semantic label 1
    masks = torch.full((2, 4, 4), -10.0)
    masks[0, :, :2] = 10.0
    masks[1, :, 2:] = 10.0
    id_map, segments = panoptic_inference(logits, masks, SPACE, InferenceConfig())
    assert segments == [{"id": 1, "isthing": False, "category": 1, "score": None, "area": 16}]
    assert bool((id_map == 1).all())


def test_no_confident_query_gives_all_void():
    logits = torch.zeros(3, SPACE.num_classes + 1)
    id_map, segments = panoptic_inference(logits, torch.randn(3, 4, 4), SPACE, InferenceConfig())
    assert segments == [] and int(id_map.abs().sum()) == 0


def test_semantic_sums_class_probabilities_into_semantic_labels():
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(5, 7, generator=g), torch.randn(5, 3, 4, generator=g)
    sem = semantic_inference(logits, masks, SPACE, 4)
    probs = logits.softmax(-1)[:, :-1]
    for y in range(3):
        for x in range(4):
            score = torch.zeros(4)
            for q in range(5):
                for c in range(6):
                    score[SPACE.sem_label[c]] += probs[q, c] * masks[q, y, x].sigmoid()
            assert int(sem[y, x]) == int(score.argmax())


def test_instances_are_thing_classes_rescored_by_mask_and_sorted():
    g = torch.Generator().manual_seed(1)
    logits, masks = torch.randn(4, 7, generator=g) * 3, torch.randn(4, 6, 6, generator=g) * 3
    out = instance_inference(logits, masks, SPACE, InferenceConfig(topk_instances=5))
    probs = logits.softmax(-1)
    # official: the top 5 (query, class) pairs over all 6 classes, then the thing pairs (classes 0..2)
    top = sorted(((q, c) for q in range(4) for c in range(6)), key=lambda qc: -float(probs[qc]))[:5]
    top = [(q, c) for q, c in top if c < 3]
    assert out["scores"].shape == (len(top),) and bool((out["scores"][:-1] >= out["scores"][1:]).all())
    assert bool((out["labels"] < 3).all()) and out["masks"].dtype == torch.bool
    expected = sorted(
        (float(probs[q, c]) * float((masks[q].sigmoid() * (masks[q] > 0)).sum() / ((masks[q] > 0).sum() + 1e-6)))
        for q, c in top)
    assert out["scores"].tolist() == pytest.approx(sorted(expected, reverse=True), rel=1e-5)
    for box, mask in zip(out["boxes"], out["masks"]):
        if mask.any():
            ys, xs = mask.nonzero(as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_class_order_semantic_follows_the_semantic_labels():
    """Cityscapes-style (sem_seg_mode all): class k is semantic label k, things keep their thing labels."""
    space = build_class_space(2, 5, [3, 4], "semantic")
    assert space.isthing == (False, False, False, True, True)
    assert space.label == (0, 1, 2, 0, 1) and space.sem_label == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="class_order=semantic"):
        build_class_space(3, 4, [3], "semantic")


def test_coco_all_mode_semantic_output_is_the_official_133_class_argmax():
    """docs/mask2former.md: with COCO's categories in sem_seg_mode all (data=coco_panoptic_folder
    data.sem_seg_mode=all), the semantic output is the official one's argmax: class k of an official
    checkpoint is COCO's k-th category by id, and the official semantic map at a pixel is the category
    whose class maximises sum_q softmax(logits)[q, k] * sigmoid(mask)[q]."""
    from panfpn.data.builtin_meta import coco_panoptic_categories
    from panfpn.data.metadata import DatasetMetadata

    meta = DatasetMetadata.from_coco_categories(coco_panoptic_categories(), sem_seg_mode="all")
    by_id = [c["id"] for c in sorted(coco_panoptic_categories(), key=lambda c: c["id"])]
    space = build_class_space(meta.num_thing_classes, meta.num_sem_classes, meta.thing_sem_labels)
    assert meta.num_sem_classes == 133
    g = torch.Generator().manual_seed(3)
    logits, masks = torch.randn(10, 134, generator=g) * 4, torch.randn(10, 5, 6, generator=g) * 3
    official = torch.einsum("qk,qhw->khw", logits.softmax(-1)[:, :-1], masks.sigmoid()).argmax(0)
    ours = semantic_inference(logits, masks, space, meta.num_sem_classes)
    got = [[meta.sem_label_to_category[int(v)] for v in row] for row in ours]
    assert got == [[by_id[int(v)] for v in row] for row in official]
