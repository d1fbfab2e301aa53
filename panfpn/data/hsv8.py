"""8-bit RGB <-> HSV conversions with OpenCV's arithmetic (hue in [0, 180)).

The SSD colour augmentation of Detectron2 / Mask2Former changes saturation and hue through
``cv2.cvtColor`` on uint8 images, so the bytes it trains on are those of OpenCV's 8-bit
conversions. These functions compute the same bytes with numpy, so the augmentation needs no
OpenCV. Forward: 12-bit fixed point with rounded reciprocal tables. Backward: float32 with
``1 - s * f`` fused into one rounding (FMA), in two ways within each image row, as OpenCV (4.x,
x86-64 with AVX2) runs it: its vector loop takes the row in blocks of 32 pixels and truncates to
uint8; the pixels left after the last whole block (a row whose width is not a multiple of 32: the
1024-wide Cityscapes crops have none) go through its scalar code, which rounds half to even.
Checked against opencv-python-headless 4.11 on all 2^24 RGB colours and all 180 x 256 x 256 HSV
triples, in rows of 256 (vector loop) and of 16 (scalar code), and on random rows of 7 to 2048
pixels; a build or CPU with another vector width (SSE: 16 pixels, no FMA) splits rows otherwise,
so OpenCV's own bytes differ between machines.
"""

from __future__ import annotations

import numpy as np

_SHIFT = 12          # fixed-point bits of the forward conversion
_HUE_RANGE = 180     # 8-bit hue: degrees / 2

_levels = np.arange(256, dtype=np.float64)
with np.errstate(divide="ignore"):
    # reciprocal tables: 255 / v for saturation, 180 / (6 * diff) for hue; entry 0 is 0
    _SAT_TABLE = np.where(_levels > 0, np.rint((255 << _SHIFT) / _levels), 0).astype(np.int64)
    _HUE_TABLE = np.where(_levels > 0, np.rint((_HUE_RANGE << _SHIFT) / (6.0 * _levels)), 0).astype(np.int64)
del _levels


def rgb_to_hsv8(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 planes R, G, B -> uint8 planes H (0..179), S, V as OpenCV's 8-bit ``RGB2HSV``."""
    r, g, b = (np.asarray(c, dtype=np.int64) for c in (r, g, b))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    s = (diff * _SAT_TABLE[v] + half) >> _SHIFT
    # which channel holds the maximum decides the hue's sector (red first, then green)
    numerator = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (numerator * _HUE_TABLE[diff] + half) >> _SHIFT  # arithmetic shift: floor for negatives
    h = np.where(h < 0, h + _HUE_RANGE, h)
    return h.astype(np.uint8), s.astype(np.uint8), v.astype(np.uint8)


VECTOR_BLOCK = 32  # pixels per step of OpenCV's vector HSV -> RGB loop (8 float32 lanes x 4)
_RED_OF = np.array([0, 2, 1, 1, 3, 0])    # per hue sector, the entry of the tab R takes
_GREEN_OF = np.array([3, 0, 0, 2, 1, 1])
_BLUE_OF = np.array([1, 1, 3, 0, 0, 2])


def _hsv8_to_rgb_part(h: np.ndarray, s: np.ndarray, v: np.ndarray, vector: bool) -> np.ndarray:
    """``[3, ...]`` uint8 R, G, B of uint8 H, S, V: the vector loop's arithmetic or the scalar one's."""
    f32 = np.float32
    inv255, one = f32(1.0) / f32(255.0), f32(1.0)
    hue = h.astype(f32) * (f32(6.0) / f32(_HUE_RANGE))
    sat = s.astype(f32) * inv255
    val = v.astype(f32) * inv255
    sector = np.floor(hue)  # hue < 6 (H < 180): OpenCV's fmod / its sector wrap change nothing
    frac = hue - sector
    # 1 - s*f with one rounding (FMA): the float64 product of two float32s is exact
    keep_f = (1.0 - sat.astype(np.float64) * frac).astype(f32)
    keep_1f = (1.0 - sat.astype(np.float64) * (one - frac)).astype(f32)
    # the four values a colour's channels take: v, v(1-s), v(1-s*f), v(1-s*(1-f))
    tab = np.stack([val, val * (one - sat), val * keep_f, val * keep_1f])
    sector = sector.astype(np.int64)
    out = np.empty((3,) + h.shape, np.uint8)
    for c, pick in enumerate((_RED_OF, _GREEN_OF, _BLUE_OF)):
        scaled = np.take_along_axis(tab, pick[sector][None], axis=0)[0]
        if not vector:
            scaled = np.where(sat == 0, val, scaled)
        scaled = scaled * f32(255.0)
        out[c] = np.clip(np.trunc(scaled) if vector else np.rint(scaled), 0, 255)
    return out


def hsv8_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 planes H (0..179), S, V ``[H, W]`` -> uint8 planes R, G, B as OpenCV's 8-bit ``HSV2RGB``
    gives them for an image of rows ``W`` wide (see the module docstring for its two paths)."""
    h, s, v = (np.asarray(c) for c in (h, s, v))
    if h.ndim != 2 or h.shape != s.shape or h.shape != v.shape:
        raise ValueError(f"expected three planes [H, W] of one size, got {h.shape}, {s.shape}, {v.shape}")
    if h.size and int(h.max()) >= _HUE_RANGE:
        raise ValueError(f"8-bit hue must be below {_HUE_RANGE}, got {int(h.max())}")
    split = h.shape[1] - h.shape[1] % VECTOR_BLOCK
    out = np.empty((3,) + h.shape, np.uint8)
    out[:, :, :split] = _hsv8_to_rgb_part(h[:, :split], s[:, :split], v[:, :split], vector=True)
    out[:, :, split:] = _hsv8_to_rgb_part(h[:, split:], s[:, split:], v[:, split:], vector=False)
    return out[0], out[1], out[2]
