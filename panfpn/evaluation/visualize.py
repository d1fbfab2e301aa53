"""Coloured panoptic overlays: category colours, things in distinct shades, outlines, labels.

Used by ``tools/predict.py`` (one overlay per image), the evaluator (ground truth | prediction
views sent to TensorBoard) and anyone holding an id map. Colouring, blending and outlines are
whole-array numpy operations; only the text labels are drawn per segment (Pillow).
"""

from __future__ import annotations

import colorsys
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from panfpn.data.metadata import Category, DatasetMetadata

RGB = tuple[int, int, int]
OUTLINE_COLOR = (255, 255, 255)
# Largest mix toward white/black of a thing instance's shade (0 = class colour, 1 = white/black).
SHADE_RANGE = 0.45
# Stuff labels are drawn only for regions at least this share of the image, to keep it readable.
MIN_STUFF_LABEL_SHARE = 0.01
_LUT_MAX_ID = 1 << 16


def category_color(cat: Category) -> RGB:
    """The category's colour; categories without one (``(0, 0, 0)``, the metadata default) get a
    stable colour from their id (golden-ratio hue steps), so they never paint the image black."""
    if any(cat.color):
        return tuple(int(v) for v in cat.color)  # type: ignore[return-value]
    r, g, b = colorsys.hsv_to_rgb((cat.id * 0.618033988749895) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _shade_offset(k: int) -> float:
    """Offset in (-1, 1) of the k-th instance of a class: 0, +1/2, -1/2, +1/4, -1/4, +3/4, -3/4,
    +1/8, ... (signed van der Corput sequence), so every instance gets a different shade and the
    first ones differ most."""
    if k == 0:
        return 0.0
    m, value, base = (k + 1) // 2, 0.0, 0.5
    while m:
        value += base * (m & 1)
        m >>= 1
        base /= 2
    return value if k % 2 else -value


def shade(color: RGB, offset: float) -> RGB:
    """Mix ``color`` toward white (offset > 0) or black (offset < 0) by ``|offset| * SHADE_RANGE``."""
    c = np.asarray(color, dtype=np.float64)
    f = offset * SHADE_RANGE
    c = c + (255.0 - c) * f if f > 0 else c * (1.0 + f)
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def segment_colors(segments: Sequence[dict], metadata: DatasetMetadata) -> dict[int, RGB]:
    """Colour per segment id: the category colour for stuff and for the first instance of a thing
    class; each further instance of that class a distinct lighter or darker shade (in list order),
    so touching instances of one class stay distinguishable.

    segments: dicts with ``id`` and ``category_id`` (dataset ids).
    """
    colors: dict[int, RGB] = {}
    seen: dict[int, int] = {}
    for seg in segments:
        cat = metadata.category(int(seg["category_id"]))
        color = category_color(cat)
        if cat.isthing:
            k = seen.get(cat.id, 0)
            seen[cat.id] = k + 1
            color = shade(color, _shade_offset(k))
        colors[int(seg["id"])] = color
    return colors


def segment_index(id_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index into sorted ``ids`` of every pixel's segment; ``len(ids)`` where the id is not listed
    (void and unknown ids). id_map: int ``[H, W]``; ids: sorted int ``[K]``. Returns int64 ``[H, W]``."""
    k = len(ids)
    if k == 0:
        return np.full(id_map.shape, 0, dtype=np.int64)
    if 0 <= ids[0] and ids[-1] < _LUT_MAX_ID:
        # model outputs number segments 1..K: a table lookup is ~4x faster than a binary search
        table = np.full(int(ids[-1]) + 2, k, dtype=np.int64)
        table[ids] = np.arange(k)
        return table[np.clip(id_map, -1, int(ids[-1]) + 1)]  # -1 and max+1 both land on "none"
    pos = np.searchsorted(ids, id_map)
    pos_c = np.minimum(pos, k - 1)
    return np.where(ids[pos_c] == id_map, pos_c, k)


def boundary_mask(id_map: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels on a boundary between two different ids (void included): bool ``[H, W]``.

    A 1-pixel line is the pixel after each change along rows and columns; ``width`` > 1 grows
    it by ``width - 1`` pixels in each direction (a separable max filter).
    """
    edge = np.zeros(id_map.shape, dtype=bool)
    edge[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    edge[1:, :] |= id_map[1:, :] != id_map[:-1, :]
    for _ in range(max(0, int(width) - 1)):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def default_outline_width(height: int, width: int) -> int:
    """1 px up to ~500 px images, growing with size (2 px at 800x1216)."""
    return max(1, round(max(height, width) / 600))


def panoptic_overlay(
    image: np.ndarray, id_map: np.ndarray, segments: Sequence[dict], metadata: DatasetMetadata, *,
    alpha: float = 0.55, outline: bool = True, labels: bool = True, outline_width: int | None = None,
) -> np.ndarray:
    """Blend a panoptic id map over an image.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        id_map: int ``[H, W]`` segment ids; 0 (void) and ids not in ``segments`` keep the image.
        segments: dicts with ``id``, ``category_id`` (dataset id) and optionally ``score``.
        metadata: categories (names, colours, thing/stuff).
        alpha: weight of the segment colour: ``out = (1 - alpha) * image + alpha * colour``.
        outline: draw boundaries between segments (and void) in white.
        labels: write class names (with scores when given) at each thing, and at stuff regions
            covering at least 1 % of the image.
        outline_width: line width in pixels; default grows with the image size.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    image = np.asarray(image)
    id_map = np.asarray(id_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if image.shape[:2] != id_map.shape:
        raise ValueError(f"image size {image.shape[:2]} differs from id map size {id_map.shape}")
    colors = segment_colors(segments, metadata)
    ids = np.array(sorted(colors), dtype=np.int64)
    pos = segment_index(id_map, ids)
    result = blend_colors(image, pos, np.array([colors[i] for i in ids], dtype=np.uint8).reshape(-1, 3), alpha)
    if outline:
        width = outline_width or default_outline_width(*id_map.shape)
        edge = np.flatnonzero(boundary_mask(id_map, width).reshape(-1))
        result.reshape(-1, 3)[edge] = OUTLINE_COLOR
    if labels and len(ids):
        result = _draw_labels(result, pos, ids, segments, colors, metadata)
    return result


def blend_colors(image: np.ndarray, pos: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """``round((1 - alpha) * image + alpha * colors[pos])`` where ``pos < K``, the image elsewhere.

    image: uint8 ``[H, W, 3]``; pos: int ``[H, W]`` index into colors (K = none); colors: uint8
    ``[K, 3]``. One packed 32-bit gather fetches the colours and one lookup in a 256x256 table of
    the blend does the arithmetic (about 5x faster than float arithmetic at 800x1216).
    """
    k = len(colors)
    h, w = pos.shape
    if k == 0:
        return image.copy()
    packed = np.zeros((k + 1, 4), dtype=np.uint8)
    packed[:k, :3] = colors
    color_img = packed.view(np.uint32).reshape(-1).take(pos).view(np.uint8).reshape(h, w, 4)[..., :3]
    pair = image.astype(np.uint16) << 8
    pair |= color_img
    out = _blend_table(float(alpha)).take(pair)
    unlisted = np.flatnonzero(pos.reshape(-1) == k)
    out.reshape(-1, 3)[unlisted] = image.reshape(-1, 3)[unlisted]
    return out


@lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """uint8 ``[256 * 256]``: entry ``256 * v + c`` = ``round((1 - alpha) * v + alpha * c)``."""
    v = np.arange(256, dtype=np.float64)
    return np.floor((1.0 - alpha) * v[:, None] + alpha * v[None, :] + 0.5).astype(np.uint8).reshape(-1)


def label_positions(pos: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor point inside each segment for its label.

    pos: int64 ``[H, W]`` segment index per pixel (``num`` = none). Returns ``(x [K], y [K],
    area [K])``: the centroid when it falls inside the segment; otherwise (concave or split
    shapes) the segment's pixel nearest to it on the centroid's row, else on its column, else
    anywhere. Area 0 means the segment has no pixel.
    """
    h, w = pos.shape
    flat = pos.reshape(-1)
    area = np.bincount(flat, minlength=num + 1)[:num]
    row_sums = np.bincount(flat, weights=np.repeat(np.arange(h, dtype=np.float64), w), minlength=num + 1)
    col_sums = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h), minlength=num + 1)
    safe = np.maximum(area, 1)
    cy, cx = row_sums[:num] / safe, col_sums[:num] / safe
    y = cy.round().astype(np.int64).clip(0, h - 1)
    x = cx.round().astype(np.int64).clip(0, w - 1)
    for k in np.nonzero((area > 0) & (pos[y, x] != np.arange(num)))[0]:
        on_row = np.nonzero(pos[y[k]] == k)[0]
        on_col = np.nonzero(pos[:, x[k]] == k)[0]
        if len(on_row):
            x[k] = on_row[np.argmin(np.abs(on_row - cx[k]))]
        elif len(on_col):
            y[k] = on_col[np.argmin(np.abs(on_col - cy[k]))]
        else:
            py, px = np.nonzero(pos == k)
            j = np.argmin((py - cy[k]) ** 2 + (px - cx[k]) ** 2)
            y[k], x[k] = py[j], px[j]
    return x, y, area


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_labels(image: np.ndarray, pos: np.ndarray, ids: np.ndarray, segments: Sequence[dict],
                 colors: dict[int, RGB], metadata: DatasetMetadata) -> np.ndarray:
    h, w = pos.shape
    xs, ys, areas = label_positions(pos, len(ids))
    index = {int(i): k for k, i in enumerate(ids)}
    font = _font(max(10, round(max(h, w) / 55)))
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    # stuff first, then things by ascending score: where labels meet, the surest is on top
    ordered = sorted(segments, key=lambda s: (metadata.category(int(s["category_id"])).isthing,
                                              float(s.get("score") or 0.0)))
    for seg in ordered:
        k = index[int(seg["id"])]
        cat = metadata.category(int(seg["category_id"]))
        if areas[k] == 0 or (not cat.isthing and areas[k] < MIN_STUFF_LABEL_SHARE * h * w):
            continue
        text = cat.name if seg.get("score") is None else f"{cat.name} {float(seg['score']):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        x0 = int(np.clip(xs[k] - tw // 2, 0, max(0, w - tw - 2)))
        y0 = int(np.clip(ys[k] - th // 2, 0, max(0, h - th - 2)))
        box_color = tuple(int(c * 0.55) for c in colors[int(seg["id"])])
        draw.rectangle((x0, y0, x0 + tw + 2, y0 + th + 2), fill=box_color)
        draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4, *,
                 titles: tuple[str, str] | None = None) -> np.ndarray:
    """Ground truth | prediction view: two uint8 ``[H, W, 3]`` images with a white gap, optionally
    under a white title band (e.g. ``titles=("ground truth", "prediction")``)."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap:] = right
    if titles is None:
        return out
    font = _font(max(10, round(out.shape[1] / 60)))
    band = font.getbbox("Ag")[3] + 6
    framed = np.full((band + h, out.shape[1], 3), 255, dtype=np.uint8)
    framed[band:] = out
    canvas = Image.fromarray(framed)
    draw = ImageDraw.Draw(canvas)
    for text, x in zip(titles, (0, left.shape[1] + gap)):
        draw.text((x + 3, 3), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
