"""Edge inputs of Mask2Former's inference, targets, losses and deformable sampling against
references written here from the official formulas (facebookresearch/Mask2Former
``maskformer_model.py``, ``modeling/criterion.py``, ``ops/src/cuda/ms_deform_im2col_cuda.cuh``)."""

import math

import pytest
import torch
import torch.nn.functional as F

from panfpn.modeling.mask2former.classes import build_class_space
from panfpn.modeling.mask2former.criterion import SetCriterion
from panfpn.modeling.mask2former.inference import (InferenceConfig, instance_inference, panoptic_inference,
                                                   resize_masks)
from panfpn.modeling.mask2former.matcher import HungarianMatcher
from panfpn.modeling.mask2former.ms_deform_attn import deformable_sample
from panfpn.modeling.mask2former.targets import build_targets

SPACE = build_class_space(3, 4, [3])  # classes 0..2 things (labels 0..2), 3..5 stuff (sem labels 0..2)


def official_instances(logits, masks, space, topk):
    """Official ``instance_inference`` with ``panoptic_on``: top-k over the flattened [Q, K] class
    probabilities (index = q * K + c), then only the thing pairs; score x mean mask prob inside."""
    probs = logits.softmax(-1)[:, :-1]
    k_all = probs.shape[1]
    pairs = sorted(range(probs.numel()), key=lambda i: -float(probs.flatten()[i]))[:topk]
    out = []
    for i in pairs:
        q, c = divmod(i, k_all)
        if not space.isthing[c]:
            continue
        binary = (masks[q] > 0).float()
        mask_score = float((masks[q].sigmoid() * binary).sum() / (binary.sum() + 1e-6))
        out.append((float(probs[q, c]) * mask_score, space.label[c], q))
    return sorted(out, key=lambda t: -t[0])


def _logits(rows, k=7, low=-8.0):
    """``[Q, k]`` logits: each row's listed (class, logit) entries, every other class ``low``."""
    x = torch.full((len(rows), k), low)
    for r, entries in enumerate(rows):
        for c, v in entries:
            x[r, c] = v
    return x


def test_instance_topk_counts_stuff_pairs_as_the_official_inference():
    # q0 is confidently stuff (class 3), q1 thing 0, q2 stuff 4: the official top-2 pairs are
    # (q0, 3) and (q1, 0), so one instance survives the thing filter, not two.
    logits = _logits([[(3, 8.0)], [(0, 7.5)], [(4, 7.0)]])
    masks = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0)) * 3
    out = instance_inference(logits, masks, SPACE, InferenceConfig(topk_instances=2))
    want = official_instances(logits, masks, SPACE, 2)
    assert len(want) == 1
    assert out["labels"].tolist() == [w[1] for w in want]
    assert out["scores"].tolist() == pytest.approx([w[0] for w in want], rel=1e-5)


def test_instances_when_the_top_k_are_all_stuff_pairs_are_empty_but_well_formed():
    logits = _logits([[(3, 9.0)], [(4, 9.0)]])
    out = instance_inference(logits, torch.randn(2, 5, 4), SPACE, InferenceConfig(topk_instances=2))
    assert out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 5, 4)


@pytest.mark.parametrize("seed", range(4))
def test_instances_equal_the_official_rule_on_random_heads(seed):
    g = torch.Generator().manual_seed(seed)
    logits, masks = torch.randn(6, 7, generator=g) * 3, torch.randn(6, 5, 5, generator=g) * 3
    out = instance_inference(logits, masks, SPACE, InferenceConfig(topk_instances=10))
    want = official_instances(logits, masks, SPACE, 10)
    assert out["scores"].tolist() == pytest.approx([w[0] for w in want], rel=1e-5)
    assert out["labels"].tolist() == [w[1] for w in want]
    assert all(bool((out["masks"][i] == (masks[w[2]] > 0)).all()) for i, w in enumerate(want))


def test_panoptic_argmax_tie_goes_to_the_first_kept_query():
    # two kept thing queries with the same score and mask: query order decides (torch argmax: first
    # maximal index, as the official cur_prob_masks.argmax(0)); the second wins nothing: dropped.
    logits = _logits([[(0, 9.0)], [(0, 9.0)]])
    masks = torch.full((2, 4, 4), 5.0)
    id_map, segs = panoptic_inference(logits, masks, SPACE, InferenceConfig())
    assert len(segs) == 1 and bool((id_map == 1).all())


def test_panoptic_overlap_ratio_exactly_at_the_threshold_is_kept():
    # q1 owns 5 pixels (prob >= 0.5) and wins 4 of them: 4 / 5 == 0.8 is not < 0.8, so it is kept.
    logits = _logits([[(0, 9.0)], [(1, 9.0)]])
    masks = torch.full((2, 1, 10), -5.0)
    masks[0, 0, 0] = 9.0  # q0 wins pixel 0 (q1's prob there is lower)
    masks[1, 0, :5] = 5.0
    _, segs = panoptic_inference(logits, masks, SPACE, InferenceConfig(overlap_threshold=0.8))
    assert [s["category"] for s in segs] == [0, 1]
    _, segs = panoptic_inference(logits, masks, SPACE, InferenceConfig(overlap_threshold=0.8000001))
    assert [s["category"] for s in segs] == [0]


def test_resize_crops_the_padding_before_resizing_to_the_output_size():
    # official: masks up to the padded input, then sem_seg_postprocess: crop to the image size,
    # bilinear to (height, width). Padding content must not leak into the output.
    mask = torch.zeros(1, 8, 16)
    mask[:, :, 10:] = 100.0  # only the padded columns (image width 40 of 64) are high
    out = resize_masks(mask, (32, 64), (30, 40), (61, 79))
    assert out.shape == (1, 61, 79)
    up = F.interpolate(mask[None], size=(32, 64), mode="bilinear", align_corners=False)[:, :, :30, :40]
    want = F.interpolate(up, size=(61, 79), mode="bilinear", align_corners=False)[0]
    assert torch.equal(out, want)


def official_criterion_ce(logits, target_classes, eos_coef):
    """Weighted cross-entropy as the official ``loss_labels`` (weighted mean: sum w*l / sum w)."""
    w = torch.ones(logits.shape[-1])
    w[-1] = eos_coef
    lp = logits.log_softmax(-1)
    wt = w[target_classes]
    return float((-(lp.gather(-1, target_classes[..., None])[..., 0]) * wt).sum() / wt.sum())


def test_losses_with_no_target_in_the_batch_are_finite_and_only_classify_no_object():
    crit = SetCriterion(6, HungarianMatcher(num_points=16), num_points=16)
    g = torch.Generator().manual_seed(2)
    classes = [torch.randn(2, 4, 7, generator=g, requires_grad=True) for _ in range(2)]
    masks = [torch.randn(2, 4, 8, 8, generator=g, requires_grad=True) for _ in range(2)]
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = crit(classes, masks, [empty, empty])
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ("", "_0")}
    assert float(losses["loss_mask"].detach()) == 0.0 == float(losses["loss_dice"].detach())
    no_object = torch.full((2, 4), 6)
    assert float(losses["loss_ce"].detach()) == pytest.approx(2.0 * official_criterion_ce(classes[-1].detach(), no_object, 0.1),
                                                     rel=1e-5)
    sum(losses.values()).backward()  # every prediction stays in the graph
    assert all(t.grad is not None for t in classes + masks)


def test_targets_skip_ignore_padding_and_thing_labels_and_keep_stuff_label_zero():
    # sem_seg: stuff labels 0..2, label 3 = things, 255 ignore; padded to 8x8 from 4x6.
    sem = torch.tensor([[0, 0, 3, 3, 255, 2]] * 4)
    inst = {"labels": torch.tensor([1]), "masks": (sem == 3)[None].to(torch.uint8)}
    batch = {"instances": [inst], "sem_seg": [sem]}
    (t,) = build_targets(batch, SPACE, (8, 8), torch.device("cpu"))
    assert t["labels"].tolist() == [1, 3, 5]  # thing class 1; stuff label 0 -> class 3, 2 -> class 5
    assert t["masks"].shape == (3, 8, 8)
    assert int(t["masks"][1].sum()) == 8 and int(t["masks"][2].sum()) == 4
    assert not t["masks"][:, 4:].any() and not t["masks"][:, :, 6:].any()  # nothing in the padding


def kernel_bilinear(vmap, x, y):
    """The official CUDA im2col sampling of one point (``ms_deform_attn_im2col_bilinear``): pixel
    coords ``x * W - 0.5``; each of the 4 corners outside the map contributes 0; none if the point
    is at or beyond one pixel outside."""
    c, h, w = vmap.shape
    xi, yi = x * w - 0.5, y * h - 0.5
    out = torch.zeros(c)
    if not (yi > -1 and xi > -1 and yi < h and xi < w):
        return out
    x0, y0 = math.floor(xi), math.floor(yi)
    lx, ly = xi - x0, yi - y0
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * vmap[:, yy, xx]
    return out


def test_deformable_sampling_at_the_borders_equals_the_official_kernel():
    shapes = [(3, 5), (2, 2)]
    g = torch.Generator().manual_seed(7)
    value = torch.randn(1, sum(h * w for h, w in shapes), 1, 2, generator=g)
    edges = [0.0, 1.0, -0.05, 1.05, 0.5 / 5, 1 - 0.5 / 5, -0.2, 1.2, 0.5]
    pts = torch.tensor([(x, y) for x in edges for y in edges])  # [P, 2]
    loc = pts.view(1, 1, 1, 1, -1, 2).expand(1, 1, 1, len(shapes), -1, 2).contiguous()
    attn = torch.zeros(1, 1, 1, len(shapes), pts.shape[0])
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        vmap = value[0, start:start + h * w, 0].T.reshape(2, h, w)
        for p, (x, y) in enumerate(pts.tolist()):
            one = attn.clone()
            one[0, 0, 0, lvl, p] = 1.0
            got = deformable_sample(value, shapes, loc, one)[0, 0]
            assert torch.allclose(got, kernel_bilinear(vmap, x, y), atol=1e-6), (lvl, x, y)
        start += h * w


def test_pixel_decoder_feed_forward_weights_start_xavier_uniform():
    # official MSDeformAttnTransformerEncoderOnly._reset_parameters: xavier_uniform_ on every
    # parameter with dim > 1 (the FFN's linear1 / linear2 too), then MSDeformAttn's own init.
    from panfpn.modeling.mask2former.pixel_decoder import DeformableEncoder

    torch.manual_seed(0)
    enc = DeformableEncoder(64, 3, 4, 2, 1, dim_feedforward=256)
    for lin in (enc.encoder.layers[0].linear1, enc.encoder.layers[0].linear2):
        weight = lin.weight.detach()
        bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))
        assert float(weight.abs().max()) <= bound
        assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    attn = enc.encoder.layers[0].self_attn  # its own init is kept (zero offsets' weight, ring bias)
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()


def _official_sine(h: int, w: int, feats: int) -> torch.Tensor:
    """The official decoder's position encoding (PositionEmbeddingSine(hidden_dim // 2, normalize=True)),
    ``[2 * feats, h, w]``: y then x, each 1..n scaled to (0, 2 pi], sin / cos interleaved."""
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * 2 * math.pi
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(feats) // 2).float() / feats)
    out = []
    for p in (y, x):
        v = p[..., None] / dim_t
        out.append(torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), -1).flatten(-2))
    return torch.cat(out, -1).permute(2, 0, 1)


def test_decoder_keys_take_a_hidden_dim_position_encoding_when_the_pixel_decoder_is_narrower():
    """Official decoder: keys = input_proj(scale) + level_embed + sine encoding of hidden_dim // 2 per
    axis (its pe_layer is built from hidden_dim). With a pixel decoder of another width (conv 1x1
    input_proj) the encoding must still have hidden_dim channels (it used the scale's width: crash)."""
    from panfpn.modeling.mask2former.transformer_decoder import MaskedTransformerDecoder

    torch.manual_seed(0)
    dec = MaskedTransformerDecoder(32, 5, hidden_dim=64, num_queries=4, n_heads=4, dim_feedforward=32,
                                   dec_layers=3, mask_dim=16).eval()
    scales = [torch.randn(2, 32, 2, 3), torch.randn(2, 32, 4, 6), torch.randn(2, 32, 8, 12)]
    seen = {}
    dec.transformer_cross_attention_layers[0].multihead_attn.register_forward_hook(
        lambda m, args, out: seen.setdefault("key", args[1]))
    with torch.no_grad():
        classes, masks = dec(scales, torch.randn(2, 16, 32, 48))
        src = dec.input_proj[0](scales[0]) + dec.level_embed.weight[0][None, :, None, None]
        want = (src + _official_sine(2, 3, 32)[None]).flatten(2).permute(2, 0, 1)
    assert classes[-1].shape == (2, 4, 6) and masks[-1].shape == (2, 4, 32, 48) and len(classes) == 4
    torch.testing.assert_close(seen["key"], want)
