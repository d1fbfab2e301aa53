"""RoI level assignment, box coding and mask pasting against independent references."""

import warnings

import torch
import torch.nn.functional as F

from panfpn.modeling.panoptic_fpn.postprocess import paste_masks, rescale_boxes, resize_sem_logits
from panfpn.modeling.panoptic_fpn.roi_ops import BoxCoder, MultiLevelRoIAlign


def test_fpn_level_rule():
    pooler = MultiLevelRoIAlign(7)
    # sqrt(area) 224 -> P4, 112 -> P3, 448 -> P5, tiny -> clamped to P2, huge -> clamped to P5.
    rois = torch.tensor([[0, 0, 0, 224, 224], [0, 0, 0, 112, 112], [0, 0, 0, 448, 448],
                         [0, 0, 0, 5, 5], [0, 0, 0, 2000, 2000], [0, 10, 10, 121.9, 121.9]],
                        dtype=torch.float32)
    assert pooler.level_of(rois).tolist() == [2, 1, 3, 0, 3, 0]


def test_pooler_reads_the_assigned_level():
    pooler = MultiLevelRoIAlign(2)
    feats = {f"p{l}": torch.full((1, 1, 256 // 2**l, 256 // 2**l), float(l)) for l in range(2, 6)}
    out = pooler(feats, [torch.tensor([[0.0, 0, 20, 20], [0, 0, 250, 250]])])
    assert out[0].unique().tolist() == [2.0] and out[1].unique().tolist() == [4.0]


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(50, 2, generator=g) * 100
    refs = torch.cat([refs, refs + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    tgts = torch.rand(50, 2, generator=g) * 100
    tgts = torch.cat([tgts, tgts + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    coder = BoxCoder((10, 10, 5, 5))
    deltas = coder.encode(tgts, refs)
    torch.testing.assert_close(coder.decode(deltas, refs), tgts, rtol=1e-4, atol=1e-3)
    # Class-specific layout: [N, 4k] decodes every group of four independently.
    two = coder.decode(torch.cat([deltas, torch.zeros_like(deltas)], 1), refs)
    torch.testing.assert_close(two[:, 4:], refs)


def _paste_reference(mask, box, h, w):
    """grid_sample reference: sample the mask at every output pixel centre."""
    x1, y1, x2, y2 = box.tolist()
    xs = ((torch.arange(w) + 0.5 - x1) / (x2 - x1)) * 2 - 1
    ys = ((torch.arange(h) + 0.5 - y1) / (y2 - y1)) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(mask[None, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0, 0]


def test_paste_masks_matches_grid_sample():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor([[3.0, 4, 40, 30], [0, 0, 64, 48], [-10, -5, 20, 25], [50, 40, 70, 47.5],
                          [10.3, 11.7, 12.1, 30.2]])
    out = paste_masks(masks, boxes, (48, 64), chunk=2)
    assert out.shape == (5, 48, 64)
    for i in range(5):
        torch.testing.assert_close(out[i], _paste_reference(masks[i], boxes[i], 48, 64),
                                   atol=1e-5, rtol=1e-5)


def test_resize_sem_logits_crops_padding_then_resizes():
    logits = torch.zeros(3, 64, 64)
    logits[1, :40, :50] = 5.0  # the real image; the padding favours class 2
    logits[2, 40:, :] = logits[2, :, 50:] = 5.0
    out = resize_sem_logits(logits, (40, 50), (80, 100))
    assert out.shape == (3, 80, 100) and (out.argmax(0) == 1).all()


def test_rescale_boxes():
    boxes = torch.tensor([[10.0, 20, 30, 40], [0, 0, 200, 200]])
    out = rescale_boxes(boxes, (100, 200), (50, 400))
    assert out.tolist() == [[20.0, 10, 60, 20], [0, 0, 400, 50]]


def test_pooler_cpu_fast_path_equals_torchvision_path(monkeypatch):
    from panfpn.modeling.panoptic_fpn import roi_ops

    g = torch.Generator().manual_seed(0)
    feats = {f"p{l}": torch.randn(2, 4, 256 // 2**l, 256 // 2**l, generator=g) for l in range(2, 6)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g) * 200
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(30, 2, generator=g) * 300], 1))
    pooler = MultiLevelRoIAlign(7)
    assert roi_ops._use_sparse(feats["p2"])
    fast = pooler(feats, boxes)
    monkeypatch.setattr(roi_ops, "_use_sparse", lambda features: False)
    torch.testing.assert_close(fast, pooler(feats, boxes), rtol=1e-5, atol=1e-5)


def test_tracing_keeps_torchvision_roi_align():
    from panfpn.modeling.panoptic_fpn import roi_ops

    seen = []

    def probe(x):
        seen.append(roi_ops._use_sparse(x))
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated in 2.14
        torch.jit.trace(probe, torch.zeros(1, 1, 2, 2), check_trace=False)
    probe(torch.zeros(1, 1, 2, 2))
    assert seen == [False, True]


def test_builds_without_sparse_kernels_keep_torchvision_roi_align(monkeypatch):
    from panfpn.modeling.panoptic_fpn import roi_align_sparse, roi_ops

    assert roi_align_sparse.sparse_mm_works("cpu")  # this build (MKL) has them
    monkeypatch.setattr(roi_ops, "sparse_mm_works", lambda device_type: False)
    assert not roi_ops._use_sparse(torch.zeros(1, 1, 2, 2))


def test_sparse_probe_reports_a_missing_kernel(monkeypatch):
    from panfpn.modeling.panoptic_fpn import roi_align_sparse

    def missing(*args):
        raise NotImplementedError("addmm_out_sparse_csr not compiled in")

    roi_align_sparse.sparse_mm_works.cache_clear()
    monkeypatch.setattr(torch.sparse, "mm", missing)
    try:
        assert roi_align_sparse.sparse_mm_works("cpu") is False
    finally:
        roi_align_sparse.sparse_mm_works.cache_clear()
