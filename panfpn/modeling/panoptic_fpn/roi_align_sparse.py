"""RoIAlign as one sparse-matrix product: the fast CPU path for training and inference.

RoIAlign is linear in the feature map: every output value is a fixed weighted sum of at most
four feature pixels per sampling point. Writing those weights as a sparse matrix ``M``
(rows = (RoI, bin), columns = (image, y, x)) turns the op into ``M @ F`` with ``F`` the
channels-last feature map viewed as ``[B*H*W, C]`` (no copy), and its gradient into
``M^T @ grad``. On CPU this is 2-10x faster than torchvision's kernel, whose backward runs on
one thread and zero-fills and re-lays-out the whole feature map for every call (measured in
``bench/roi_align.py``). The numbers are torchvision's ``roi_align`` to float rounding: the
same sampling points computed in the same float32 order, summed in a different order.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator

import torch


@contextlib.contextmanager
def _quiet_csr_beta() -> Iterator[None]:
    """Silences torch's 'sparse CSR tensor support is in beta' notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta")
        yield


@functools.lru_cache(maxsize=None)
def sparse_mm_works(device_type: str = "cpu") -> bool:
    """Whether this torch build multiplies sparse CSR matrices (and their transposes) on that
    device: the MKL-backed CPU kernels are missing from some builds (macOS, Windows), and
    callers then keep torchvision's RoIAlign."""
    matrix = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]], device=device_type)
    dense = torch.arange(6.0, device=device_type).reshape(3, 2)
    try:
        with _quiet_csr_beta():
            csr = matrix.to_sparse_csr()
        product = torch.sparse.mm(csr, dense)
        back = torch.sparse.mm(csr.t(), product)
    except (RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(product, matrix @ dense) and torch.equal(back, matrix.t() @ product))


def _bilinear_axis(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """(low index, high index, weight of low, weight of high, inside) along one axis."""
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, 1.0 - frac, frac, inside


def _roi_grid(rois: torch.Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> tuple[torch.Tensor, ...]:
    """Per RoI: start x/y and bin width/height in feature pixels, sampling points per bin side."""
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x0
    roi_h = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:  # the legacy op forces a RoI to be at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    if sampling_ratio > 0:
        grid_h = torch.full((rois.shape[0],), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(bin_h).long().clamp(min=0)
        grid_w = torch.ceil(bin_w).long().clamp(min=0)
    return x0, y0, bin_w, bin_h, grid_h, grid_w


def interpolation_matrix(rois: torch.Tensor, output_size: int, spatial_scale: float,
                         feature_shape: tuple[int, int, int], sampling_ratio: int = 0,
                         aligned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """RoIAlign's interpolation weights: a sparse CSR matrix ``[R*P*P, B*H*W]`` and the number
    of sampling points per RoI ``[R]`` (an output bin is its row's weighted sum / that number).

    Args:
        rois: ``[R, 5]`` float (image index, x1, y1, x2, y2) in input pixels.
        output_size: P, bins per side.
        spatial_scale: feature pixels per input pixel (1 / stride).
        feature_shape: (B, H, W) of the feature map.
        sampling_ratio: samples per bin side; <= 0 means ceil(bin size), as in RoIAlign.
        aligned: shift by half a pixel (Detectron2's ROIAlignV2; our default).

    Row ``r*P*P + ph*P + pw`` holds the weights of output bin (ph, pw) of RoI r: four
    bilinear weights per sampling point; points more than one pixel outside the map
    contribute nothing but still count. Dividing after the sum, as the reference kernel does,
    keeps e.g. the average of a constant map exact.
    """
    batch, height, width = feature_shape
    device = rois.device
    rois = rois.float()
    n_rois, bins = rois.shape[0], output_size * output_size
    image = rois[:, 0].long()
    x0, y0, bin_w, bin_h, grid_h, grid_w = _roi_grid(rois, output_size, spatial_scale,
                                                     sampling_ratio, aligned)
    samples = grid_h * grid_w  # per bin of each RoI; 0 for an empty RoI (its output is 0)

    # One entry per sampling point, enumerated row by row: (row, k-th point of the row).
    per_row = samples.repeat_interleave(bins)
    row_end = per_row.cumsum(0)
    total = int(row_end[-1]) if n_rois else 0
    row = torch.repeat_interleave(torch.arange(n_rois * bins, device=device), per_row,
                                  output_size=total)
    k = torch.arange(total, device=device) - (row_end - per_row)[row]
    roi = row // bins
    ph, pw = (row % bins).div(output_size, rounding_mode="floor"), row % output_size
    gw = grid_w[roi]
    iy, ix = k.div(gw, rounding_mode="floor"), k % gw
    # Same float32 expression order as the reference kernel.
    y = y0[roi] + ph.float() * bin_h[roi] + (iy.float() + 0.5) * bin_h[roi] / grid_h[roi].float()
    x = x0[roi] + pw.float() * bin_w[roi] + (ix.float() + 0.5) * bin_w[roi] / gw.float()

    y_lo, y_hi, wy_lo, wy_hi, in_y = _bilinear_axis(y, height)
    x_lo, x_hi, wx_lo, wx_hi, in_x = _bilinear_axis(x, width)
    values = torch.stack([wy_lo * wx_lo, wy_lo * wx_hi, wy_hi * wx_lo, wy_hi * wx_hi], 1)
    values *= (in_y & in_x).float()[:, None]
    base = image[roi] * (height * width)
    columns = torch.stack([y_lo * width + x_lo, y_lo * width + x_hi,
                           y_hi * width + x_lo, y_hi * width + x_hi], 1) + base[:, None]
    crow = torch.zeros(n_rois * bins + 1, dtype=torch.long, device=device)
    torch.cumsum(4 * per_row, 0, out=crow[1:])
    with _quiet_csr_beta():
        matrix = torch.sparse_csr_tensor(crow, columns.reshape(-1), values.reshape(-1),
                                         size=(n_rois * bins, batch * height * width),
                                         check_invariants=False)
    return matrix, samples.clamp(min=1)


# Sampling points per matrix. Building one costs ~300 bytes of temporaries per point, so this
# bounds them to ~300 MB (huge RoIs on large images, e.g. Cityscapes at full resolution, can
# need tens of millions of points); a training step at 800x1333, batch 2 (~0.6M points in the
# box pooler) stays in one group.
MAX_POINTS = 1 << 20


class _SparseTimesDense(torch.autograd.Function):
    """``matrix @ dense`` in float32, differentiable in ``dense`` (also under autocast)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        with torch.autocast(grad.device.type, enabled=False):
            return None, torch.sparse.mm(ctx.matrix.t(), grad.float())


def roi_align_sparse(features: torch.Tensor, rois: torch.Tensor, output_size: int,
                     spatial_scale: float = 1.0, sampling_ratio: int = 0, aligned: bool = True,
                     max_points: int = MAX_POINTS) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (same arguments, ``rois`` as ``[R, 5]``) as ``M @ F``.

    Differentiable in ``features`` (not in ``rois``, like RoIAlign). Returns float32
    ``[R, C, P, P]`` in channels-last memory; a channels-last ``features`` is read in place.
    RoIs are processed in groups of about ``max_points`` sampling points (see ``_chunks``).
    """
    batch, channels, height, width = features.shape
    flat = features.float().permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    rois = rois.float()
    outs = [_align_chunk(flat, chunk, output_size, spatial_scale, (batch, height, width),
                         sampling_ratio, aligned)
            for chunk in _chunks(rois, output_size, spatial_scale, sampling_ratio, aligned,
                                 max_points)]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape(rois.shape[0], output_size, output_size, channels).permute(0, 3, 1, 2)


def _chunks(rois: torch.Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
            aligned: bool, max_points: int) -> tuple[torch.Tensor, ...]:
    """Consecutive groups of RoIs: those whose points start within the same ``max_points``
    stretch of the running total, so a group holds under ``max_points`` plus one RoI's points
    and the matrix's temporaries stay bounded."""
    *_, grid_h, grid_w = _roi_grid(rois, output_size, spatial_scale, sampling_ratio, aligned)
    points = grid_h * grid_w * (output_size * output_size)
    ends = points.cumsum(0)
    if rois.shape[0] == 0 or int(ends[-1]) <= max_points:
        return (rois,)
    group = torch.div(ends - points, max_points, rounding_mode="floor")  # by each RoI's start
    sizes = torch.unique_consecutive(group, return_counts=True)[1]
    return torch.split(rois, sizes.tolist())


def _align_chunk(flat: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                 feature_shape: tuple[int, int, int], sampling_ratio: int,
                 aligned: bool) -> torch.Tensor:
    """``[R, P*P, C]`` RoIAlign output of ``rois`` from the ``[B*H*W, C]`` feature view."""
    matrix, samples = interpolation_matrix(rois, output_size, spatial_scale, feature_shape,
                                           sampling_ratio, aligned)
    with torch.autocast(flat.device.type, enabled=False):  # float32, like RoIAlign's kernel
        out = _SparseTimesDense.apply(matrix, flat)
        out = out.reshape(rois.shape[0], output_size * output_size, flat.shape[1])
        return out / samples.float()[:, None, None]
