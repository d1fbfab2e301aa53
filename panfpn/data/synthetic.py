"""Synthetic COCO-panoptic datasets: learnable scenes of textured stuff and shaped things.

Each image partitions the background into textured stuff regions (one texture family per class)
and paints 2-6 shapes on top (one shape per thing class, colour from a class-specific hue family,
random size, aspect, rotation), so later shapes occlude earlier ones. About 15 % of images hold a
crowd: a cluster of small shapes of one class stored as one ``iscrowd=1`` segment. Small blobs and
image frames are void (id 0). Category ids are deliberately non-contiguous and segment ids are
random 24-bit values, so code that assumes contiguous ids or ids < 256 fails on this data.

Command line::

    python -m panfpn.data.synthetic --out DIR --num-images N --seed S [--height H --width W] [--overwrite]

writes ``DIR/images/*.jpg``, ``DIR/panoptic/*.png`` and ``DIR/panoptic.json``; a ``DIR`` that
already holds a dataset is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.panoptic_io import id_to_rgb, segment_areas_boxes
from panfpn.utils.atomic import save_image_atomic, write_json_atomic
from panfpn.utils.cache_dir import default_cache_dir

# Bump when the generated content changes, so cached datasets are regenerated.
GENERATOR_VERSION = 1

# (id, name, hue family or texture, display colour); ids are non-contiguous on purpose.
_THINGS = (
    (1, "ellipse", 0.00, (220, 40, 40)),
    (3, "rectangle", 0.15, (230, 200, 30)),
    (7, "triangle", 0.50, (30, 200, 200)),
    (12, "ring", 0.83, (200, 40, 200)),
)
_STUFF = (
    (101, "gradient", (40, 90, 200)),
    (105, "stripes", (40, 160, 60)),
    (130, "checker", (170, 110, 50)),
    (200, "speckle", (130, 130, 130)),
)
_MIN_THING_AREA = 24  # visible pixels; smaller things are removed so every instance is learnable
_CROWD_PROB = 0.15


def synthetic_metadata() -> DatasetMetadata:
    """Categories of the synthetic dataset: 4 things (ids 1, 3, 7, 12), 4 stuff (101, 105, 130, 200)."""
    cats = [{"id": i, "name": n, "isthing": 1, "color": list(c), "supercategory": "shape"}
            for i, n, _, c in _THINGS]
    cats += [{"id": i, "name": n, "isthing": 0, "color": list(c), "supercategory": "texture"}
             for i, n, c in _STUFF]
    return DatasetMetadata.from_coco_categories(cats, name="synthetic")


# ----- geometry ---------------------------------------------------------------------------------
@dataclass
class _Shape:
    kind: int  # index into _THINGS
    cx: float
    cy: float
    size: float  # major extent in pixels
    aspect: float  # minor / major
    angle: float  # radians
    segment: int  # index into the image's segment list


def _rotated(yy: np.ndarray, xx: np.ndarray, s: _Shape) -> tuple[np.ndarray, np.ndarray]:
    c, si = np.cos(s.angle), np.sin(s.angle)
    dx, dy = xx - s.cx, yy - s.cy
    return c * dx + si * dy, -si * dx + c * dy


def _shape_mask(yy: np.ndarray, xx: np.ndarray, s: _Shape) -> np.ndarray:
    """bool ``[H, W]`` pixels covered by the shape."""
    u, v = _rotated(yy, xx, s)
    a, b = s.size / 2, max(s.size * s.aspect / 2, 1.5)
    name = _THINGS[s.kind][1]
    if name == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if name == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if name == "triangle":
        # Isosceles triangle: apex at -b on the v axis, base at +b from -a to +a.
        p = np.array([[0.0, -b], [-a, b], [a, b]])
        inside = np.ones(u.shape, dtype=bool)
        for i in range(3):
            (x0, y0), (x1, y1) = p[i], p[(i + 1) % 3]
            inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) <= 0
        return inside
    # ring: outer ellipse minus a concentric inner one
    r = (u / a) ** 2 + (v / (a * max(s.aspect, 0.75))) ** 2
    return (r <= 1.0) & (r >= 0.3)


# ----- textures ---------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _stuff_texture(name: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float ``[H, W, 3]`` texture of one stuff class (each class its own pattern and palette)."""
    h, w = yy.shape
    theta = rng.uniform(0, np.pi)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    if name == "gradient":  # smooth blue ramp
        c0, c1 = _hsv(0.60 + rng.uniform(-0.04, 0.04), 0.7, 0.9), _hsv(0.62, 0.5, 0.4)
        f = (t - t.min()) / max(np.ptp(t), 1.0)
        tex = c0 * (1 - f[..., None]) + c1 * f[..., None]
        noise = 6.0
    elif name == "stripes":  # green stripes with random period and orientation
        period = rng.uniform(6, 12)
        f = (np.sin(2 * np.pi * t / period) > 0).astype(np.float64)
        c0, c1 = _hsv(0.33 + rng.uniform(-0.04, 0.04), 0.7, 0.75), _hsv(0.30, 0.4, 0.35)
        tex = c0 * f[..., None] + c1 * (1 - f[..., None])
        noise = 8.0
    elif name == "checker":  # orange/brown checkerboard
        cell = rng.uniform(5, 10)
        f = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float64)
        c0, c1 = _hsv(0.08 + rng.uniform(-0.02, 0.02), 0.7, 0.8), _hsv(0.07, 0.6, 0.35)
        tex = c0 * f[..., None] + c1 * (1 - f[..., None])
        noise = 8.0
    else:  # speckle: grey base with strong per-pixel noise
        tex = np.broadcast_to(_hsv(0.75, 0.15, rng.uniform(0.45, 0.6)), (h, w, 3)).copy()
        noise = 40.0
    return tex + rng.normal(0, noise, size=(h, w, 1))


def _thing_texture(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float ``[H, W, 3]``: class hue family colour with a random linear shading and mild noise."""
    hue = _THINGS[kind][2] + rng.uniform(-0.04, 0.04)
    base = _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    gx, gy = rng.uniform(-0.6, 0.6, size=2)
    shade = 1.0 + (gx * (xx - xx.mean()) + gy * (yy - yy.mean())) / max(xx.shape)
    return base * shade[..., None] + rng.normal(0, 5.0, size=(*yy.shape, 1))


# ----- one image --------------------------------------------------------------------------------
def _stuff_regions(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int ``[H, W]`` stuff class index per pixel: a Voronoi partition with wavy borders."""
    h, w = yy.shape
    n_sites = rng.integers(2, 6)
    sites = rng.uniform([0, 0], [h, w], size=(n_sites, 2))
    classes = rng.integers(0, len(_STUFF), size=n_sites)
    amp, freq = rng.uniform(3, 10), rng.uniform(0.03, 0.08)
    wy = yy + amp * np.sin(2 * np.pi * freq * xx + rng.uniform(0, 6))
    wx = xx + amp * np.sin(2 * np.pi * freq * yy + rng.uniform(0, 6))
    d = (wy[None] - sites[:, 0, None, None]) ** 2 + (wx[None] - sites[:, 1, None, None]) ** 2
    return classes[d.argmin(axis=0)]


def _plan_shapes(h: int, w: int, rng: np.random.Generator) -> tuple[list[_Shape], list[tuple[int, bool]]]:
    """Shapes in paint order and the thing segments they form: (thing kind, iscrowd)."""
    shapes: list[_Shape] = []
    segments: list[tuple[int, bool]] = []
    scale = min(h, w) / 128.0
    n_things = rng.integers(2, 7)
    crowd_at = rng.integers(0, n_things + 1) if rng.random() < _CROWD_PROB else -1
    for i in range(n_things + 1):
        if i == crowd_at:
            kind = int(rng.integers(0, len(_THINGS)))
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            for _ in range(rng.integers(4, 8)):
                shapes.append(_Shape(kind, cx + rng.uniform(-16, 16) * scale,
                                     cy + rng.uniform(-16, 16) * scale, rng.uniform(9, 16) * scale,
                                     rng.uniform(0.6, 1.0), rng.uniform(0, 2 * np.pi), len(segments)))
            segments.append((kind, True))
        elif i < n_things:
            kind = int(rng.integers(0, len(_THINGS)))
            size = rng.uniform(12, 60) * scale
            angle = rng.uniform(-0.5, 0.5) if _THINGS[kind][1] == "rectangle" else rng.uniform(0, 2 * np.pi)
            shapes.append(_Shape(kind, rng.uniform(0, w), rng.uniform(0, h), size,
                                 rng.uniform(0.5, 1.0), angle, len(segments)))
            segments.append((kind, False))
    return shapes, segments


def _void_mask(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = yy.shape
    void = np.zeros((h, w), dtype=bool)
    if rng.random() < 0.3:  # thin frame, like unlabelled image borders
        b = int(rng.integers(1, 4))
        void[:b], void[-b:], void[:, :b], void[:, -b:] = True, True, True, True
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 6)
            void |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return void


def generate_image(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One scene.

    Returns the RGB image uint8 ``[H, W, 3]``, the id map int64 ``[H, W]`` (0 = void) and the
    segments ``{id, category_id, iscrowd, area, bbox}`` (COCO-panoptic ``segments_info``).
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    stuff = _stuff_regions(yy, xx, rng)
    shapes, thing_segs = _plan_shapes(h, w, rng)
    void = _void_mask(yy, xx, rng)
    masks = [_shape_mask(yy, xx, s) for s in shapes]

    # Drop things that end up (almost) hidden; removing one only uncovers others, so iterate.
    keep = np.ones(len(thing_segs), dtype=bool)
    while True:
        owner = np.full((h, w), -1, dtype=np.int64)
        for s, m in zip(shapes, masks):
            if keep[s.segment]:
                owner[m] = s.segment
        owner[void] = -2
        area = np.bincount(owner[owner >= 0], minlength=len(thing_segs))
        small = keep & (area < _MIN_THING_AREA)
        if not small.any():
            break
        keep &= ~small

    # Colours: stuff textures by region, then shapes in paint order, then void as dark noise.
    img = np.zeros((h, w, 3))
    for k, (_, name, _) in enumerate(_STUFF):
        region = stuff == k
        if region.any():
            img[region] = _stuff_texture(name, yy, xx, rng)[region]
    for s, m in zip(shapes, masks):
        if keep[s.segment]:
            img[m] = _thing_texture(s.kind, yy, xx, rng)[m]
    img[void] = rng.normal(25, 15, size=(int(void.sum()), 3))

    # Segment ids: distinct random 24-bit values (exercises all three PNG channels).
    n_stuff, n_thing = len(_STUFF), len(thing_segs)
    ids = rng.choice((1 << 24) - 1, size=n_stuff + n_thing, replace=False) + 1
    id_map = np.where(owner >= 0, ids[n_stuff + np.maximum(owner, 0)], ids[stuff])
    id_map[void] = 0
    cats = [c[0] for c in _STUFF] + [_THINGS[k][0] for k, _ in thing_segs]
    crowd = [False] * n_stuff + [c for _, c in thing_segs]
    boxes = segment_areas_boxes(id_map)
    segments = [
        {"id": int(ids[i]), "category_id": cats[i], "iscrowd": int(crowd[i]),
         "area": boxes[int(ids[i])][0], "bbox": boxes[int(ids[i])][1]}
        for i in range(len(ids)) if int(ids[i]) in boxes
    ]
    return np.clip(img, 0, 255).astype(np.uint8), id_map, segments


def existing_dataset_files(out: str | os.PathLike) -> list[str]:
    """What in ``out`` belongs to a dataset: ``panoptic.json``, a non-empty ``images/`` or ``panoptic/``."""
    out = Path(out)
    found = ["panoptic.json"] if (out / "panoptic.json").exists() else []
    found += [f"{sub}/ ({sum(1 for _ in (out / sub).iterdir())} files)" for sub in ("images", "panoptic")
              if (out / sub).is_dir() and any((out / sub).iterdir())]
    return found


def _clear_dataset(out: Path) -> None:
    """Remove what :func:`generate_dataset` writes (and nothing else) before overwriting."""
    (out / "panoptic.json").unlink(missing_ok=True)
    for sub in ("images", "panoptic"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)


def generate_dataset(out: str | os.PathLike, num_images: int, seed: int, *, height: int = 128,
                     width: int = 128, overwrite: bool = False) -> Path:
    """Write a complete COCO-panoptic dataset to ``out``.

    Layout: ``out/images/{id:06d}.jpg``, ``out/panoptic/{id:06d}.png``, ``out/panoptic.json``.
    The content depends only on ``(num_images, seed, height, width)``. A folder that already holds
    a dataset (:func:`existing_dataset_files`) is refused with FileExistsError unless
    ``overwrite``, which first removes ``panoptic.json``, ``images/`` and ``panoptic/``.
    """
    if num_images < 1 or height < 32 or width < 32:
        raise ValueError(f"need num_images >= 1 and an image of at least 32x32, got "
                         f"{num_images} images of {height}x{width}")
    out = Path(out)
    found = existing_dataset_files(out)
    if found and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({', '.join(found)}); choose an empty "
                              f"folder, or overwrite it (--overwrite, overwrite=True)")
    if found:
        _clear_dataset(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "panoptic").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    # One child stream per image: image k is the same whatever num_images is.
    for k, child in enumerate(np.random.SeedSequence(seed).spawn(num_images)):
        img, id_map, segments = generate_image(height, width, np.random.default_rng(child))
        image_id = k + 1
        save_image_atomic(out / "images" / f"{image_id:06d}.jpg", img, "JPEG", quality=95)
        save_image_atomic(out / "panoptic" / f"{image_id:06d}.png", id_to_rgb(id_map))
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": height,
                       "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{image_id:06d}.png",
                            "segments_info": segments})
    write_json_atomic(out / "panoptic.json", {
        "info": {"description": f"panfpn synthetic panoptic v{GENERATOR_VERSION}, seed {seed}"},
        "images": images, "annotations": annotations,
        "categories": synthetic_metadata().to_coco_categories(),
    })
    return out


def ensure_synthetic(split: str, num_images: int, seed: int, height: int = 128, width: int = 128,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the synthetic dataset with these parameters, generated on first use.

    Generation writes into a temporary sibling directory that is renamed into place, so a
    half-written dataset is never visible and concurrent processes (DDP ranks) are safe: a
    process that loses the rename race discards its copy and uses the winner's.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"synthetic_v{GENERATOR_VERSION}_{split}_n{num_images}_s{seed}_{height}x{width}"
    if (final / "panoptic.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        generate_dataset(tmp, num_images, seed, height=height, width=width)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "panoptic.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in --out (its panoptic.json, images/, panoptic/)")
    a = p.parse_args(argv)
    try:
        out = generate_dataset(a.out, a.num_images, a.seed, height=a.height, width=a.width,
                               overwrite=a.overwrite)
    except FileExistsError as e:
        p.error(str(e))
    print(f"wrote {a.num_images} images to {out}")


if __name__ == "__main__":
    main()
