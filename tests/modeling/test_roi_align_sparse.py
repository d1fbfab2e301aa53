"""The sparse-matrix RoIAlign equals torchvision's roi_align, values and gradients."""

import pytest
import torch
from torchvision.ops import roi_align

from panfpn.modeling.panoptic_fpn.roi_align_sparse import _chunks, interpolation_matrix, roi_align_sparse


def _random_rois(g: torch.Generator, n: int, batch: int, extent: float) -> torch.Tensor:
    """RoIs of every kind: inside, straddling and beyond the border, tiny, empty, inverted."""
    xy = torch.rand(n, 2, generator=g) * extent * 1.4 - extent * 0.2
    wh = torch.rand(n, 2, generator=g) * extent * 0.6
    wh[: n // 8] *= 0.01  # sub-pixel RoIs
    wh[n // 8: n // 6] = 0.0  # empty RoIs
    wh[n // 6: n // 5] *= -0.2  # inverted RoIs (x2 < x1): zero output when aligned
    image = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([image, xy, xy + wh], 1)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_torchvision(sampling_ratio, aligned, channels_last):
    g = torch.Generator().manual_seed(sampling_ratio * 4 + 2 * aligned + channels_last)
    batch, channels, h, w, stride, size = 2, 5, 13, 17, 8, 7
    features = torch.randn(batch, channels, h, w, generator=g)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    rois = _random_rois(g, 96, batch, extent=w * stride)
    ref_in = features.clone().requires_grad_()
    our_in = features.clone().requires_grad_()
    ref = roi_align(ref_in, rois, size, spatial_scale=1 / stride, sampling_ratio=sampling_ratio,
                    aligned=aligned)
    ours = roi_align_sparse(our_in, rois, size, spatial_scale=1 / stride,
                            sampling_ratio=sampling_ratio, aligned=aligned)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    ref.backward(grad)
    ours.backward(grad)
    torch.testing.assert_close(our_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)


def test_matrix_rows_sum_to_the_share_of_points_inside():
    # A RoI well inside the map: every bin's weights sum to 1 (an average of its points).
    rois = torch.tensor([[0.0, 8, 8, 40, 30], [1.0, -200, -200, -150, -150]])
    matrix, samples = interpolation_matrix(rois, 4, 0.5, (2, 32, 32), sampling_ratio=0)
    sums = matrix.to_dense().sum(1).reshape(2, 16) / samples[:, None]
    torch.testing.assert_close(sums[0], torch.ones(16))
    # ...and a RoI far outside reads nothing: all its weights are zero.
    assert sums[1].abs().max() == 0


def test_no_rois_and_roi_on_the_second_image():
    features = torch.randn(2, 3, 8, 8)
    empty = roi_align_sparse(features, torch.zeros(0, 5), 2)
    assert empty.shape == (0, 3, 2, 2)
    # A box covering image 1 entirely averages image 1 only.
    full = roi_align_sparse(features, torch.tensor([[1.0, 0, 0, 8, 8]]), 1, sampling_ratio=8)
    torch.testing.assert_close(full[0, :, 0, 0], features[1].mean((1, 2)))


def test_points_exactly_on_the_inside_limits():
    # One sampling point per RoI, landing exactly on y/x = -1 and = size (both still read the
    # border pixel), and just beyond them (read nothing).
    features = torch.arange(64.0).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0.0, 7, 7, 9, 9], [0, -2, -2, 0, 0], [0, 7, 7, 9.5, 9.5],
                         [0, -2.5, -2.5, 0, 0], [0, -2, 3, 0, 5]])
    ref = roi_align(features, rois, 1, sampling_ratio=1, aligned=False)
    ours = roi_align_sparse(features, rois, 1, sampling_ratio=1, aligned=False)
    assert ref.flatten().tolist() == [63.0, 0.0, 0.0, 0.0, 32.0]
    torch.testing.assert_close(ours, ref)


def test_grouped_rois_give_the_same_values_and_gradients():
    # A point budget far below one RoI's points splits the RoIs into many groups (one RoI per
    # group); the result must not depend on the grouping.
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _random_rois(g, 40, 2, extent=64)
    assert len(_chunks(rois, 5, 0.25, 0, True, max_points=60)) > 10
    whole_in = features.clone().requires_grad_()
    split_in = features.clone().requires_grad_()
    whole = roi_align_sparse(whole_in, rois, 5, spatial_scale=0.25)
    split = roi_align_sparse(split_in, rois, 5, spatial_scale=0.25, max_points=60)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)
    grad = torch.randn(whole.shape, generator=g)
    whole.backward(grad)
    split.backward(grad)
    torch.testing.assert_close(split_in.grad, whole_in.grad, rtol=1e-6, atol=1e-6)
