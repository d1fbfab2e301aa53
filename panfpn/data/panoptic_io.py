"""Reading and writing COCO-panoptic files: id PNGs (id = R + 256 G + 256^2 B) and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from panfpn.data.image_io import ImageReadError

_ID_PNG_MODES = ("RGB", "RGBA", "P")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of an id PNG's pixels.

    rgb: uint8 ``[H, W, 3]``. Returns int32 ``[H, W]`` (ids < 2^24 fit), 0 = void.
    """
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: int ``[H, W]`` ids -> uint8 ``[H, W, 3]``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("segment ids must lie in [0, 2^24) to be stored in an RGB PNG")
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """Read an id PNG into int32 ``[H, W]`` segment ids, as stored (no EXIF orientation: id
    PNGs carry none, and COCO's are in the stored pixel order).

    Raises:
        ImageReadError: the file is truncated or not an image (names the file).
        ValueError: the PNG is not RGB, RGBA or palette (e.g. greyscale): it cannot hold ids.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            rgb = np.asarray(img.convert("RGB")) if mode in _ID_PNG_MODES else None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad files; report all
        raise ImageReadError.for_file(path, f"cannot read as a PNG ({type(e).__name__}: {e})") from None
    if rgb is None:
        raise ValueError(f"{path}: a panoptic id PNG must be RGB (id = R + 256 G + 256^2 B; RGBA "
                         f"and palette PNGs are read as RGB), got image mode {mode!r}")
    return rgb_to_id(rgb)


def load_json(path: str | os.PathLike) -> dict:
    """Load a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def segment_bbox_area(id_map: np.ndarray, seg_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO boxes ``[x, y, w, h]`` and pixel areas of the given segment ids.

    id_map: int ``[H, W]``; seg_ids: int ``[K]``. Returns int64 ``[K, 4]`` boxes and ``[K]``
    areas; a segment absent from the map gets area 0 and box ``[0, 0, 0, 0]``.
    """
    seg_ids = np.asarray(seg_ids)
    masks = id_map[None] == seg_ids[:, None, None]  # [K, H, W]
    areas = masks.sum(axis=(1, 2)).astype(np.int64)
    rows = masks.any(axis=2)  # [K, H]
    cols = masks.any(axis=1)  # [K, W]
    boxes = np.zeros((len(seg_ids), 4), dtype=np.int64)
    present = areas > 0
    if present.any():
        h, w = id_map.shape
        y0 = rows.argmax(axis=1)
        y1 = h - rows[:, ::-1].argmax(axis=1)
        x0 = cols.argmax(axis=1)
        x1 = w - cols[:, ::-1].argmax(axis=1)
        boxes[present] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[present]
    return boxes, areas
