"""Shortest-edge resizing of a uint8 image with tensor ops only, bit-exact to the eager test transform.

The test transform (:class:`panfpn.data.transforms.ResizeShortestEdge`) resizes uint8 images with
Pillow's ``BILINEAR`` resize, as Detectron2's ``ResizeTransform`` does
(:func:`panfpn.data.transforms.resize_image`). Its fixed-point arithmetic, per axis: triangle-filter
weights normalised in float64, scaled by ``2**22`` and rounded half up to integers, integer sums
plus ``2**21`` shifted right by 22 and clamped to 0..255; one axis into bytes, then the other.
:func:`resize_uint8` does the same arithmetic with gathers and float64 sums, so it traces to standard
ONNX ops (Gather, Cast, MatMul, Floor, Clip, Where) and gives the same bytes. The weights (float64 until
rounded) are at most ``2**22`` and each row's sum is ``2**22`` give or take the taps' rounding, so with
bytes below 256 every product and partial sum is an integer below ``2**31``: exact in float64 in any
order. Memory: one channel at a time, its taps gathered as bytes and widened to float64 for a batched
matrix product (``[n, 1, K] @ [n, K, M]``, no product tensor): about 26 bytes per input pixel in
onnxruntime on a large downscale, where gathering all channels in float64 and multiplying took 155
(bench/RESULTS.md, session 15).

Pass order: Pillow < 13 always runs the horizontal pass first; Pillow >= 13 runs the vertical pass
first when the height shrinks by more than twice as many pixels as the width
(:func:`pillow_runs_vertical_first`: portraits taller than about 2:1 being shrunk). Each pass rounds
and clamps to bytes, so the two orders differ by 1 in about a third of such an image's bytes.
:func:`resize_uint8` follows the order it is given (:func:`installed_pass_order`: that of the Pillow
the eager transform uses here). The size-dependent order is decided from the sizes inside the graph:
a Python branch on eager ints; traced (int64 tensors) or exported (``torch.export``'s symbolic
sizes) both orders are in the graph, each on a number of rows computed from the sizes: the order
taken on all ``out_h`` output rows (and all input rows), the other on 0, concatenated. So no size
is specialised or guarded, and the resize costs one order's work (computing both in full and
selecting with ``torch.where`` doubled it). ``torch.cond`` is not taken: the TorchScript ONNX
exporter refuses it. A pass whose axis keeps its size is skipped by Pillow; here it runs with
weight ``2**22`` on one tap, the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Float64 scalars are one-element float64 tensors, never Python floats or 0-dim tensors: the
# TorchScript ONNX exporter types those as float32 and computes the expression in float32.
_PRECISION = 22  # Pillow's fixed-point precision for 8-bit images (32 - 8 - 2 bits)


def f64(value: float | Tensor) -> Tensor:
    """A float64 ``[1]`` tensor of a number, a size or a scalar tensor (an ONNX export keeps it float64)."""
    if isinstance(value, Tensor):
        return value.reshape(1).double()
    if isinstance(value, (int, float)):
        return torch.tensor([value], dtype=torch.float64)
    return torch.ones(1, dtype=torch.float64) * value  # a symbolic size (torch.export)


def size_of(tensor: Tensor, dim: int) -> Tensor | int:
    """``tensor.shape[dim]``: an int in eager mode, a symbolic int under ``torch.export``, a traced
    int64 scalar under ``torch.jit`` tracing (the TorchScript ONNX exporter keeps it dynamic)."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(tensor)[dim]
    return tensor.shape[dim]


def unbacked_size(size: torch.SymInt, largest: int | None = None, smallest: int = 1) -> torch.SymInt:
    """Under ``torch.export``: ``size`` (a formula of the input's sizes) as a fresh size read from a
    tensor, in ``smallest..largest``. Every shape after it is then a simple expression of one symbol instead
    of the resize's formula (``sym_ite``, float rounding). ``torch.export``'s shape reasoning is
    symbolic algebra on those formulas: with the fresh size, exporting is ~3x and loading the
    program ~5x faster, and no guard is taken on the formula (before, a trace-time comparison of the
    P5 size became a guard that refused resized short sides of 32 px or less: one P5 cell)."""
    fresh = (torch.ones(1, dtype=torch.long) * size)[0].item()
    torch._check(fresh >= smallest)
    if largest is not None:
        torch._check(fresh <= largest)
    return fresh


def shortest_edge_size(height: Tensor | int, width: Tensor | int, short: int,
                       max_size: int) -> tuple[Tensor | int, Tensor | int]:
    """:func:`panfpn.data.transforms.shortest_edge_size` on int64 scalar tensors (float64 arithmetic
    in the same order, as Python's): the shorter side becomes ``short``, the longer at most
    ``max_size``."""
    if not isinstance(height, Tensor):  # eager ints or torch.export's symbolic ints: Python's float64
        scale = short / torch.sym_min(height, width)
        size = scale * 0.0 + short  # == short, symbolic as the other branch (sym_ite takes one type)
        new_h = torch.sym_ite(height < width, size, height * scale)
        new_w = torch.sym_ite(height < width, width * scale, size)
        longer = torch.sym_max(new_h, new_w)
        new_h = torch.sym_ite(longer > max_size, new_h * (max_size / longer), new_h)
        new_w = torch.sym_ite(longer > max_size, new_w * (max_size / longer), new_w)
        return (torch.sym_max(torch.sym_int(new_h + 0.5), 1),
                torch.sym_max(torch.sym_int(new_w + 0.5), 1))
    h, w, size = f64(height), f64(width), f64(short)
    scale = size / torch.minimum(h, w)
    new_h = torch.where(h < w, size, h * scale)
    new_w = torch.where(h < w, w * scale, size)
    longer = torch.maximum(new_h, new_w)
    over = longer > f64(max_size)
    new_h = torch.where(over, new_h * (f64(max_size) / longer), new_h)
    new_w = torch.where(over, new_w * (f64(max_size) / longer), new_w)
    out_h = torch.maximum(torch.floor(new_h + f64(0.5)), f64(1.0)).long()[0]
    out_w = torch.maximum(torch.floor(new_w + f64(0.5)), f64(1.0)).long()[0]
    return out_h, out_w


def _axis_weights(in_size: Tensor, out_size: Tensor, rows: Tensor | int | None = None) -> tuple[Tensor, Tensor]:
    """Taps of one axis: source indices long ``[rows, K]`` and integer weights float64 ``[rows, K]``
    (0 on unused taps; each row sums to about ``2**22``). ``rows``: the first that many output
    positions (default all ``out_size``)."""
    n_in, n_out = f64(in_size), f64(out_size)
    one, half, zero = f64(1.0), f64(0.5), f64(0.0)
    scale = n_in / n_out
    support = torch.where(scale >= one, scale, one)  # bilinear: half-width 1
    invscale = torch.where(scale >= one, one / scale, one)
    centre = scale * (torch.arange(out_size if rows is None else rows, dtype=torch.float64) + half)
    first = torch.maximum(torch.floor(centre - support + half), zero)
    last = torch.minimum(torch.floor(centre + support + half), n_in)
    taps = 2 * ((in_size + out_size - 1) // out_size) + 1  # 2 ceil(support) + 1 >= every last - first
    j = torch.arange(taps, dtype=torch.float64)
    src = first[:, None] + j[None, :]
    x = ((src - centre[:, None]) + half) * invscale
    weights = torch.maximum(one - x.abs(), zero)
    weights = torch.where(src < last[:, None], weights, zero)
    total = weights.sum(1, keepdim=True)
    weights = torch.where(total != zero, weights / torch.where(total != zero, total, one), weights)
    scaled = torch.floor(weights * f64(float(1 << _PRECISION)) + half)  # weights >= 0: half up
    index = torch.minimum(src, n_in - 1).long()
    return index, scaled


_UNIT, _HALF_UNIT = float(1 << _PRECISION), float(1 << (_PRECISION - 1))  # the fixed point's 1 and rounding


def _pass(rows: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """One axis of the separable resize on one channel: uint8 ``[N, M]`` resampled along its rows
    (dim 0) -> uint8 ``[n, M]``, rounded and clamped like the fixed-point kernel. The taps are
    gathered as bytes, widened to float64 and summed by a batched product ``[n, 1, K] @ [n, K, M]``
    (no ``[n, K, M]`` product is materialised): every product and partial sum is an integer below
    ``2**31`` (weights at most ``2**22``, a row's sum at most ``2**22 + K / 2`` after rounding, bytes
    below 256), exact in float64 in any order. Not int32: onnxruntime's CUDA provider has no integer
    MatMul (it would run the node on the CPU provider, copying the taps across) nor has PyTorch on
    CUDA; float64's is on both, at ~1.6x the int32 product's memory and time on the CPU
    (bench/RESULTS.md, session 15)."""
    g = rows[index].double()  # a 2-D index gathers [n, K, M] directly (no reshape: n or M may be 0)
    acc = torch.matmul(weights[:, None, :], g)[:, 0, :]
    return torch.floor((acc + _HALF_UNIT) / _UNIT).clamp(max=255.0).to(torch.uint8)


def _horizontal_first(channel: Tensor, across: tuple[Tensor, Tensor], down: tuple[Tensor, Tensor]) -> Tensor:
    """uint8 ``[H, W]`` -> ``[out_h, out_w]``: the columns' pass (on the transposed channel), then the rows'."""
    return _pass(_pass(channel.t(), *across).t(), *down)


def _vertical_first(channel: Tensor, across: tuple[Tensor, Tensor], down: tuple[Tensor, Tensor]) -> Tensor:
    """uint8 ``[H, W]`` -> ``[out_h, out_w]``: the rows' pass, then the columns' (on the transpose)."""
    return _pass(_pass(channel, *down).t(), *across).t()


def _per_channel(image: Tensor, resize: Callable[..., Tensor], *weights: tuple[Tensor, Tensor]) -> Tensor:
    """``resize`` on each channel of uint8 ``[C, H, W]`` in turn, stacked: one channel's gather
    temporaries at a time."""
    return torch.stack([resize(channel, *weights) for channel in image.unbind(0)])


HORIZONTAL_FIRST = "horizontal_first"  # Pillow < 13: every resize
PILLOW13 = "vertical_first_if_height_shrinks_most"  # Pillow >= 13: pillow_runs_vertical_first
PASS_ORDERS = (HORIZONTAL_FIRST, PILLOW13)


def installed_pass_order() -> str:
    """The pass order of the installed Pillow (the one the eager test transform resizes with)."""
    import PIL

    return PILLOW13 if int(PIL.__version__.split(".")[0]) >= 13 else HORIZONTAL_FIRST


def pass_order(order: str | None) -> str:
    """``order`` checked against :data:`PASS_ORDERS`; None: :func:`installed_pass_order`."""
    if order is None:
        return installed_pass_order()
    if order not in PASS_ORDERS:
        raise ValueError(f"resize pass order {order!r}: expected one of {PASS_ORDERS}")
    return order


def pillow_runs_vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether Pillow >= 13 resizes ``in_h x in_w`` to ``out_h x out_w`` vertical pass first: when
    the height shrinks, by more than twice as many pixels as the width (its speed rule; a width that
    grows counts negative)."""
    return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def resize_uint8(image: Tensor, out_h: Tensor | int, out_w: Tensor | int, order: str | None = None) -> Tensor:
    """uint8 (or integer-valued float) ``[3, H, W]`` -> uint8 ``[3, out_h, out_w]``: the bytes Pillow's
    ``BILINEAR`` resize gives, its passes in ``order`` (:data:`PASS_ORDERS`; default the installed
    Pillow's; see the module docstring)."""
    order = pass_order(order)
    x = image.to(torch.uint8)
    h, w = size_of(x, 1), size_of(x, 2)
    across = _axis_weights(w, out_w)
    if order == HORIZONTAL_FIRST:
        return _per_channel(x, _horizontal_first, across, _axis_weights(h, out_h))
    if all(isinstance(n, int) for n in (h, w, out_h, out_w)):  # eager: one order
        first = _vertical_first if pillow_runs_vertical_first(h, w, out_h, out_w) else _horizontal_first
        return _per_channel(x, first, across, _axis_weights(h, out_h))
    # traced or exported sizes: both orders in the graph, the unused one on 0 rows (no guard on the sizes)
    shrink_h, shrink_w = f64(h) - f64(out_h), f64(w) - f64(out_w)
    vertical = ((shrink_h > f64(0.0)) & (shrink_h > f64(2.0) * shrink_w)).long()
    rows_v = out_h * vertical[0]  # output rows of the vertical-first order: out_h or 0
    kept = h - h * vertical[0]  # input rows the horizontal-first order reads: all or none
    if not torch.jit.is_tracing():  # torch.export: fresh size symbols (as unbacked_size)
        rows_v, kept = rows_v.item(), kept.item()
        torch._check(rows_v >= 0)
        torch._check(rows_v <= out_h)
        torch._check(kept >= 0)
        torch._check(kept <= h)
    rows_h = out_h - rows_v  # output rows of the horizontal-first order: the rest
    down_h, down_v, kept_rows = _axis_weights(h, out_h, rows_h), _axis_weights(h, out_h, rows_v), torch.arange(kept)

    def both_orders(channel: Tensor, across: tuple[Tensor, Tensor]) -> Tensor:
        first = _horizontal_first(channel.index_select(0, kept_rows), across, down_h)
        return torch.cat([first, _vertical_first(channel, across, down_v)], dim=0)
    return _per_channel(x, both_orders, across)
