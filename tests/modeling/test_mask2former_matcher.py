"""Mask2Former's Hungarian matcher: the assignment is the brute-force optimum of its cost matrix,
and the cost matrix's mask terms are the dense losses when the points are the pixel centres."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from panfpn.modeling.mask2former.matcher import HungarianMatcher
from panfpn.modeling.mask2former.points import pairwise_dice, pairwise_sigmoid_ce, point_sample


def _case(q, t, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k + 1, generator=g) * 2
    masks = torch.randn(q, 8, 8, generator=g) * 3
    target_masks = torch.rand(t, 32, 32, generator=g) > 0.5
    labels = torch.randint(0, k, (t,), generator=g)
    return logits, masks, labels, target_masks


@pytest.mark.parametrize("q,t,seed", [(3, 3, 0), (5, 3, 1), (6, 2, 2), (4, 4, 3), (7, 1, 4)])
def test_assignment_is_the_brute_force_optimum(q, t, seed):
    matcher = HungarianMatcher(num_points=64)
    logits, masks, labels, target_masks = _case(q, t, k=4, seed=seed)
    torch.manual_seed(seed)
    cost = matcher.cost_matrix(logits, masks, labels, target_masks)
    torch.manual_seed(seed)  # the same random points in the matcher's call
    [(rows, cols)] = matcher(logits[None], masks[None], [{"labels": labels, "masks": target_masks}])
    best = min(sum(float(cost[p[j], j]) for j in range(t)) for p in itertools.permutations(range(q), t))
    assert len(rows) == len(cols) == t and len(set(rows.tolist())) == t
    assert sorted(cols.tolist()) == list(range(t))
    assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_image_without_targets_matches_nothing():
    matcher = HungarianMatcher(num_points=16)
    logits, masks, _, _ = _case(4, 1, k=3, seed=0)
    [(rows, cols)] = matcher(logits[None], masks[None], [{"labels": torch.zeros(0, dtype=torch.long),
                                                          "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}])
    assert rows.numel() == cols.numel() == 0


def test_cost_terms_equal_dense_losses_at_pixel_centres():
    """Sampling every pixel centre reproduces the pixel values, so the point costs are the dense
    BCE / dice of every (prediction, target) pair computed by a plain loop."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 6, 5, generator=g) * 3
    tgt = (torch.rand(3, 6, 5, generator=g) > 0.5).float()
    ys, xs = torch.meshgrid((torch.arange(6) + 0.5) / 6, (torch.arange(5) + 0.5) / 5, indexing="ij")
    coords = torch.stack((xs.flatten(), ys.flatten()), -1)[None]
    p = point_sample(pred[:, None], coords.expand(4, -1, -1))[:, 0]
    t = point_sample(tgt[:, None], coords.expand(3, -1, -1))[:, 0]
    assert torch.allclose(p, pred.flatten(1), atol=1e-5) and torch.allclose(t, tgt.flatten(1), atol=1e-6)
    ce, dice = pairwise_sigmoid_ce(p, t), pairwise_dice(p, t)
    for i in range(4):
        for j in range(3):
            assert ce[i, j] == pytest.approx(float(F.binary_cross_entropy_with_logits(pred[i], tgt[j])), abs=1e-5)
            s = pred[i].sigmoid()
            want = 1 - (2 * (s * tgt[j]).sum() + 1) / (s.sum() + tgt[j].sum() + 1)
            assert dice[i, j] == pytest.approx(float(want), abs=1e-5)


def test_class_cost_prefers_the_right_class():
    """With no mask cost, each target goes to the query most confident in its class."""
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=0.0, dice_weight=0.0, num_points=4)
    logits = torch.full((3, 4), -5.0)
    logits[0, 2] = logits[1, 0] = logits[2, 1] = 5.0
    labels = torch.tensor([1, 2])
    [(rows, cols)] = matcher(logits[None], torch.zeros(1, 3, 4, 4), [{"labels": labels,
                                                                     "masks": torch.ones(2, 4, 4, dtype=torch.bool)}])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}
