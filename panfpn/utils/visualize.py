"""Coloured panoptic overlays: category colours, things in distinct shades, outlines, labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from panfpn.data.metadata import DatasetMetadata


def segment_colors(segments: Sequence[dict], metadata: DatasetMetadata) -> dict[int, tuple[int, int, int]]:
    """Colour per segment id: the category colour; each further instance of a thing class a shade
    lighter or darker, so touching instances of one class stay distinguishable."""
    colors: dict[int, tuple[int, int, int]] = {}
    seen: dict[int, int] = {}
    for seg in segments:
        base = np.array(metadata.category(seg["category_id"]).color, dtype=np.float64)
        if metadata.category(seg["category_id"]).isthing:
            k = seen.get(seg["category_id"], 0)
            seen[seg["category_id"]] = k + 1
            # alternate lighter/darker steps around the class colour
            step = ((k + 1) // 2) * (1 if k % 2 else -1) * 0.18
            base = base + (255 - base) * step if step > 0 else base * (1 + step)
        colors[int(seg["id"])] = tuple(int(v) for v in np.clip(base, 0, 255))
    return colors


def panoptic_overlay(
    image: np.ndarray, id_map: np.ndarray, segments: Sequence[dict], metadata: DatasetMetadata, *,
    alpha: float = 0.55, outline: bool = True, labels: bool = True,
) -> np.ndarray:
    """Blend a panoptic id map over an image.

    image: uint8 [H, W, 3] RGB; id_map: int [H, W] (0 = void, left as the image); segments: dicts
    with ``id``, ``category_id`` and optionally ``score``. Returns uint8 [H, W, 3].
    """
    if image.shape[:2] != id_map.shape:
        raise ValueError(f"image size {image.shape[:2]} differs from id map size {id_map.shape}")
    colors = segment_colors(segments, metadata)
    ids = np.array(sorted(colors), dtype=np.int64)
    lut = np.array([colors[i] for i in ids], dtype=np.float64).reshape(-1, 3)
    pos = np.searchsorted(ids, id_map) if len(ids) else np.zeros(id_map.shape, dtype=np.int64)
    pos = np.clip(pos, 0, max(len(ids) - 1, 0))
    known = (ids[pos] == id_map) if len(ids) else np.zeros(id_map.shape, dtype=bool)
    out = image.astype(np.float64)
    if len(ids):
        out[known] = (1 - alpha) * out[known] + alpha * lut[pos[known]]
    if outline:
        edge = np.zeros(id_map.shape, dtype=bool)
        edge[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
        edge[1:, :] |= id_map[1:, :] != id_map[:-1, :]
        out[edge] = 255.0
    result = np.clip(out, 0, 255).astype(np.uint8)
    if labels:
        result = _draw_labels(result, id_map, segments, metadata)
    return result


def _draw_labels(image: np.ndarray, id_map: np.ndarray, segments: Sequence[dict],
                 metadata: DatasetMetadata) -> np.ndarray:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for seg in segments:
        ys, xs = np.nonzero(id_map == seg["id"])
        if len(ys) == 0:
            continue
        cat = metadata.category(seg["category_id"])
        text = cat.name if seg.get("score") is None else f"{cat.name} {seg['score']:.2f}"
        x, y = int(np.median(xs)), int(np.median(ys))
        box = draw.textbbox((x, y), text)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Ground truth | prediction view: two uint8 [H, W, 3] images with a white gap."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap:] = right
    return out
