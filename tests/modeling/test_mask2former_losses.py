"""Point sampling, uncertainty-based point selection and the mask / class losses of Mask2Former,
against dense computations."""

import pytest
import torch
import torch.nn.functional as F

from panfpn.modeling.mask2former.criterion import SetCriterion
from panfpn.modeling.mask2former.matcher import HungarianMatcher
from panfpn.modeling.mask2former.ms_deform_attn import deformable_sample
from panfpn.modeling.mask2former.points import dice_loss, point_sample, sigmoid_ce_loss, uncertain_point_coords


def _centres(h, w):
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack((xs.flatten(), ys.flatten()), -1)


def test_point_sample_is_bilinear_with_pixel_corners_at_0_and_1():
    maps = torch.arange(12.0).view(1, 1, 3, 4)
    coords = torch.tensor([[[0.125, 1 / 6], [0.25, 1 / 6], [0.5, 0.5]]])  # centre (0,0); halfway (0,0)-(0,1); centre of map
    got = point_sample(maps, coords)[0, 0]
    assert torch.allclose(got, torch.tensor([0.0, 0.5, 5.5]), atol=1e-5)


def test_losses_on_all_pixel_centres_equal_the_dense_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 7, 9, generator=g) * 2
    labels = (torch.rand(3, 7, 9, generator=g) > 0.4).float()
    coords = _centres(7, 9)[None].expand(3, -1, -1)
    pl = point_sample(logits, coords)[:, 0]
    tl = point_sample(labels[:, None], coords)[:, 0]
    dense_ce = F.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="none").flatten(1).mean(1)
    p, t = logits[:, 0].sigmoid().flatten(1), labels.flatten(1)
    dense_dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    assert torch.allclose(sigmoid_ce_loss(pl, tl), dense_ce, atol=1e-5)
    assert torch.allclose(dice_loss(pl, tl), dense_dice, atol=1e-5)


def test_uncertain_points_are_where_the_logit_is_near_zero():
    """Logits are 10 except a vertical band at 0: with importance ratio 1, every chosen point
    (the most uncertain of 16x oversampled random ones) lies in the band; with 0 they are uniform."""
    logits = torch.full((2, 1, 64, 64), 10.0)
    logits[:, :, :, 24:40] = 0.0  # x in [0.375, 0.625]
    torch.manual_seed(0)
    pts = uncertain_point_coords(logits, num_points=20, oversample_ratio=16.0, importance_ratio=1.0)
    assert pts.shape == (2, 20, 2)
    assert bool(((pts[..., 0] > 0.375) & (pts[..., 0] < 0.625)).all())
    torch.manual_seed(0)
    uniform = uncertain_point_coords(logits, num_points=400, oversample_ratio=3.0, importance_ratio=0.0)
    assert 0.4 < float(uniform[..., 0].mean()) < 0.6 and float(((uniform[..., 0] - 0.5).abs() > 0.125).float().mean()) > 0.3


def _criterion(**kw):
    return SetCriterion(3, HungarianMatcher(num_points=50), num_points=50, **kw)


def test_class_loss_is_the_no_object_weighted_cross_entropy():
    crit = _criterion(class_weight=1.0, deep_supervision=False)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 4, generator=g)
    masks = torch.randn(1, 4, 8, 8, generator=g)
    targets = [{"labels": torch.tensor([2, 0]), "masks": torch.rand(2, 32, 32, generator=g) > 0.5}]
    torch.manual_seed(0)
    losses = crit([logits], [masks], targets)
    torch.manual_seed(0)
    [(rows, cols)] = crit.matcher(logits, masks, targets)
    want_cls = torch.full((4,), 3)
    want_cls[rows] = targets[0]["labels"][cols]
    weights = torch.tensor([1.0, 1.0, 1.0, 0.1])
    manual = sum(-weights[c] * F.log_softmax(logits[0, q], -1)[c] for q, c in enumerate(want_cls.tolist()))
    assert float(losses["loss_ce"]) == pytest.approx(float(manual / weights[want_cls].sum()), rel=1e-5)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}


def test_mask_losses_approach_the_dense_losses_of_the_matched_pairs():
    """Uniform points (importance 0) make the point losses an unbiased estimate of the dense
    losses; with many points they agree closely. Masks loss is summed over targets / num targets."""
    crit = _criterion(deep_supervision=False, importance_sample_ratio=0.0)
    crit.num_points = 20000
    g = torch.Generator().manual_seed(2)
    masks = torch.randn(1, 3, 16, 16, generator=g) * 2
    tgt = torch.rand(2, 16, 16, generator=g) > 0.5
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]
    torch.manual_seed(0)
    bce, dice = crit.mask_losses(masks, [{"labels": torch.tensor([0, 1]), "masks": tgt}], indices, torch.tensor(2.0))
    # the dense reference: both maps interpolated on a fine grid of the same extent (the integral
    # the uniform points estimate)
    fine = _centres(128, 128)[None].expand(2, -1, -1)
    pred = point_sample(masks[0, [2, 0]][:, None], fine)[:, 0]
    lab = point_sample(tgt[:, None].float(), fine)[:, 0]
    assert float(bce) == pytest.approx(float(sigmoid_ce_loss(pred, lab).sum() / 2), rel=0.03)
    assert float(dice) == pytest.approx(float(dice_loss(pred, lab).sum() / 2), rel=0.03)
    assert 0 < float(dice) < 1


def test_deep_supervision_adds_one_set_per_auxiliary_prediction():
    crit = _criterion()
    g = torch.Generator().manual_seed(3)
    classes = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    masks = [torch.randn(2, 5, 8, 8, generator=g) for _ in range(3)]
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)},
               {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    losses = crit(classes, masks, targets)
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) for v in losses.values())


def test_deformable_sampling_equals_per_point_bilinear_sampling():
    """The batched grid_sample of the deformable attention equals sampling each (query, head,
    level, point) alone and summing with its weight."""
    g = torch.Generator().manual_seed(4)
    shapes = [(4, 6), (2, 3)]
    b, heads, dh, q, pts = 2, 2, 3, 5, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, dh, generator=g)
    loc = torch.rand(b, q, heads, len(shapes), pts, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(b, q, heads, len(shapes), pts, generator=g)
    out = deformable_sample(value, shapes, loc, attn)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for bi in range(b):
        for qi in range(q):
            for hi in range(heads):
                acc = torch.zeros(dh)
                for li, (h, w) in enumerate(shapes):
                    vmap = value[bi, starts[li]:starts[li] + h * w, hi].T.reshape(1, dh, h, w)
                    for pi in range(pts):
                        acc += attn[bi, qi, hi, li, pi] * point_sample(vmap, loc[bi, qi, hi, li, pi].view(1, 1, 2))[0, :, 0]
                assert torch.allclose(out[bi, qi, hi * dh:(hi + 1) * dh], acc, atol=1e-5)
