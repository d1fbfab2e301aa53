"""Every image mode Pillow writes is decoded to the right uint8 RGB, upright, by the one reader
that training/eval datasets and predict share.

Files are written by Pillow; PNG and JPEG files carry EXIF orientation 6. TIFF files carry none:
Pillow's TIFF reader applies the orientation tag itself, differently per mode, so it would test
Pillow rather than us.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panfpn.data.dataset import PanopticDataset
from panfpn.data.image_files import ImageFileDataset
from panfpn.data.image_io import read_image
from panfpn.data.panoptic_io import id_to_rgb

H, W = 4, 6  # stored size; EXIF orientation 6 shows it 6 tall, 4 wide


def _grid(values) -> np.ndarray:
    """``values`` repeated over an H x W grid in row-major order."""
    flat = np.resize(np.asarray(values), H * W)
    return flat.reshape(H, W)


def _grey(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(g, dtype=np.uint8)[..., None], 3, axis=2)


def _palette_image() -> tuple[Image.Image, np.ndarray]:
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 180, 90], [255, 255, 0]], dtype=np.uint8)
    idx = _grid([0, 1, 2, 3, 2]).astype(np.uint8)
    img = Image.fromarray(idx, mode="L").convert("P")
    img.putpalette(colours.flatten().tolist() + [0] * (768 - 12))
    img.putdata(idx.flatten().tolist())
    img.info["transparency"] = 2  # index 2 transparent: its palette colour is kept
    return img, colours[idx]


def _cases() -> dict[str, tuple]:
    """mode -> (Pillow image as written, file suffix, expected uint8 RGB of the stored pixels)."""
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = _grid([0, 255, 128, 7]).astype(np.uint8)
    bits = _grid([0, 1, 1, 0, 1]).astype(bool)
    u16 = _grid([0, 255, 256, 1000, 32768, 65535]).astype(np.uint16)
    u16_expected = _grey(_grid([0, 0, 1, 3, 128, 255]))
    i32 = _grid([-5, 0, 1 << 23, 100 << 23, (1 << 31) - 1]).astype(np.int32)
    cmyk = _grid([0, 1, 2, 3]).astype(np.int64)
    cmyk_values = np.array([[0, 255, 255, 0], [255, 0, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]], np.uint8)
    cmyk_rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]], np.uint8)
    ycc = np.stack([g, np.full_like(g, 128), np.full_like(g, 128)], axis=2)
    palette, palette_expected = _palette_image()
    return {
        "RGB": (Image.fromarray(rgb), "png", rgb),
        "L": (Image.fromarray(g), "png", _grey(g)),
        "1": (Image.fromarray(bits), "png", _grey(bits * 255)),
        "P": (palette, "png", palette_expected),
        "LA": (Image.fromarray(np.stack([g, alpha], 2), mode="LA"), "png", _grey(g)),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), "png", rgb),  # alpha dropped
        "CMYK": (Image.fromarray(cmyk_values[cmyk], mode="CMYK"), "jpg", cmyk_rgb[cmyk]),  # lossy
        "YCbCr": (Image.fromarray(ycc, mode="YCbCr"), "tiff", _grey(g)),
        "I;16": (Image.fromarray(u16), "png", u16_expected),  # numpy uint16 -> 16-bit PNG
        "I;16B": (Image.fromarray(u16.astype(">u2")), "tiff", u16_expected),
        "I": (Image.fromarray(i32), "tiff", _grey(_grid([0, 0, 1, 100, 255]))),
        "F[0,1]": (Image.fromarray(_grid([0.0, 0.5, 1.0, 0.2]).astype(np.float32)), "tiff",
                   _grey(_grid([0, 128, 255, 51]))),
        "F[0,255]": (Image.fromarray(_grid([0.0, 100.4, 255.0, 2.0]).astype(np.float32)), "tiff",
                     _grey(_grid([0, 100, 255, 2]))),
        "F[0,65535]": (Image.fromarray(_grid([0.0, 2570.0, 65535.0, -3.0]).astype(np.float32)), "tiff",
                       _grey(_grid([0, 10, 255, 0]))),
    }


CASES = _cases()


def _write(tmp_path: Path, mode: str) -> tuple[Path, np.ndarray]:
    """The case's file (PNG/JPEG: with EXIF orientation 6) and the pixels a viewer shows."""
    img, suffix, expected = CASES[mode]
    assert img.mode == mode.split("[")[0]
    path = tmp_path / f"img.{suffix}"
    if suffix == "tiff":
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        img.save(path, exif=exif, **({"quality": 100} if suffix == "jpg" else {}))
        expected = np.rot90(expected, k=-1)
    with Image.open(path) as check:
        assert check.mode == img.mode  # the file really is in this mode
    return path, expected


def _assert_pixels(got: np.ndarray, expected: np.ndarray, mode: str) -> None:
    assert got.dtype == np.uint8 and got.shape == expected.shape
    tol = 6 if CASES[mode][1] == "jpg" else 0
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tol


def _one_image_dataset(tmp_path: Path, image: Path, png_hw: tuple[int, int]) -> PanopticDataset:
    """A COCO-panoptic dataset of ``image`` whose one stuff segment covers a ``png_hw`` PNG."""
    (tmp_path / "pan").mkdir()
    Image.fromarray(id_to_rgb(np.full(png_hw, 5))).save(tmp_path / "pan" / "a.png")
    data = {"images": [{"id": 1, "file_name": image.name, "height": png_hw[0], "width": png_hw[1]}],
            "annotations": [{"image_id": 1, "file_name": "a.png",
                             "segments_info": [{"id": 5, "category_id": 3, "iscrowd": 0}]}],
            "categories": [{"id": 3, "name": "wall", "isthing": 0}]}
    (tmp_path / "ds.json").write_text(json.dumps(data))
    return PanopticDataset(tmp_path / "ds.json", image.parent, tmp_path / "pan", is_train=False)


@pytest.mark.parametrize("mode", list(CASES))
def test_every_mode_decodes_right_and_upright_in_dataset_and_predict(tmp_path, mode):
    path, expected = _write(tmp_path, mode)
    _assert_pixels(read_image(path), expected, mode)
    # training / evaluation datasets
    sample = _one_image_dataset(tmp_path, path, expected.shape[:2])[0]
    _assert_pixels(sample["image"].permute(1, 2, 0).numpy(), expected, mode)
    # predict
    item = ImageFileDataset([path])[0]
    _assert_pixels(item["orig_image"], expected, mode)
    assert item["orig_size"] == expected.shape[:2]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    """The reported bug: a 16-bit PNG read as solid white."""
    ramp = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    Image.fromarray(ramp).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))
    assert len(np.unique(out)) > 10  # a ramp, not a constant


def test_png_following_stored_pixels_of_rotated_image_is_refused(tmp_path):
    """The id PNG must have the upright (EXIF-transposed) size; one of the stored size is named."""
    path, _ = _write(tmp_path, "RGB")
    ds = _one_image_dataset(tmp_path, path, (H, W))
    with pytest.raises(ValueError, match=r"image id 1: image .*img\.png is 6x4 \(EXIF orientation "
                                         r"applied\).*4x6.*EXIF orientation 6"):
        ds[0]


def test_a_json_size_of_the_stored_pixels_of_a_rotated_image_is_refused_with_the_reason(tmp_path):
    """The JSON's width/height are compared with the upright image, as Detectron2 does."""
    path, expected = _write(tmp_path, "RGB")  # stored H x W, shown W x H (EXIF orientation 6)
    _one_image_dataset(tmp_path, path, expected.shape[:2])  # the upright size: right in the PNG
    data = json.loads((tmp_path / "ds.json").read_text())
    data["images"][0].update(height=H, width=W)  # the stored size, as some exporters write
    (tmp_path / "ds.json").write_text(json.dumps(data))
    ds = PanopticDataset(tmp_path / "ds.json", path.parent, tmp_path / "pan", is_train=False)
    with pytest.raises(ValueError, match=rf"ds\.json: image id 1: image .*img\.png is width {H}, height {W} "
                                         rf"\(EXIF orientation applied\) but the JSON says width {W}, height {H}.*"
                                         r"EXIF orientation 6 turns it by 90 degrees"):
        ds[0]
