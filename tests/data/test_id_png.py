"""The one id-PNG reader (panoptic_io.read_id_png): the same ids as Pillow's own decoding of RGB,
RGBA and palette PNGs with either decoder, and greyscale / 16-bit PNGs refused naming the file and
the mode, in the dataset as in the PQ evaluator."""

from __future__ import annotations

import struct
from contextlib import nullcontext
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panfpn.data import panoptic_io, wuffs_png
from panfpn.data.dataset import PanopticDataset
from panfpn.data.image_io import ImageReadError
from panfpn.data.panoptic_io import read_id_png


def write_png_rgb16(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written from the PNG specification (Pillow cannot write one):
    IHDR colour type 2, bit depth 16; filter type 0 rows of big-endian samples."""
    h, w, _ = rgb16.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _palette_image(rng: np.random.Generator, n_colours: int) -> Image.Image:
    palette = rng.integers(0, 256, (n_colours, 3), dtype=np.uint8)
    img = Image.fromarray(rng.integers(0, n_colours, (9, 13), dtype=np.uint8), mode="P")
    img.putpalette(palette.ravel().tolist())
    return img


def _id_pngs(tmp_path: Path) -> dict[str, Path]:
    """RGB, RGBA (alpha 0 included), 8-bit and 4-bit palette, palette with a transparent index."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (9, 13, 1), dtype=np.uint8)
    alpha[0, :3] = 0
    saves = {"rgb": (Image.fromarray(rgb), {}),
             "rgba": (Image.fromarray(np.concatenate([rgb, alpha], axis=2)), {}),
             "palette": (_palette_image(rng, 200), {}),
             "palette_4bit": (_palette_image(rng, 16), {"bits": 4}),
             "palette_transparent": (_palette_image(rng, 50), {"transparency": 3})}
    paths = {}
    for name, (img, kw) in saves.items():
        paths[name] = tmp_path / f"{name}.png"
        img.save(paths[name], **kw)
    return paths


def _pillow_ids(path: Path) -> np.ndarray:
    """Pillow's colours of the file (palette colours, alpha dropped) as R + 256 G + 256^2 B."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGBA"))[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


@pytest.fixture(params=["wuffs", "pyspng", "pillow"])
def decoder(request, monkeypatch) -> str:
    """Each decoder of the one reader: Wuffs and pyspng (when installed) and the Pillow fallback."""
    if request.param != "wuffs":
        monkeypatch.setattr(wuffs_png, "ImageDecoder", None)
    if request.param == "pillow":
        monkeypatch.setattr(panoptic_io, "_pyspng", None)
    elif request.param == "pyspng" and panoptic_io._pyspng is None:
        pytest.skip("pyspng is not installed (the 'fast' extra): the pyspng path cannot run")
    elif request.param == "wuffs" and not wuffs_png.available():
        pytest.skip("pywuffs is not installed (the 'fast' extra): the Wuffs path cannot run")
    assert panoptic_io.id_png_decoder() == request.param
    return request.param


def test_ids_equal_pillows_on_rgb_rgba_and_palette_pngs(tmp_path, decoder):
    paths = _id_pngs(tmp_path)
    for name, path in paths.items():
        ids = read_id_png(path)
        assert ids.dtype == np.int32 and ids.shape == (9, 13), name
        np.testing.assert_array_equal(ids, _pillow_ids(path), err_msg=name)
        words = panoptic_io.read_id_png_packed(path)  # the PQ evaluator's form: id in the low 24 bits
        assert words.dtype == np.uint32 and words.shape == (9, 13), name
        np.testing.assert_array_equal(words & 0xFFFFFF, ids, err_msg=name)
    assert np.unique(read_id_png(paths["palette_transparent"])).size > 1


def _refused_pngs(tmp_path: Path) -> dict[str, Path]:
    grey = np.random.default_rng(1).integers(0, 256, (9, 13), dtype=np.uint8)
    paths = {mode: tmp_path / f"{mode.replace(';', '')}.png" for mode in ("L", "I;16", "LA", "RGB16")}
    Image.fromarray(grey).save(paths["L"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["I;16"])
    Image.fromarray(np.stack([grey, grey], axis=2), mode="LA").save(paths["LA"])
    write_png_rgb16(paths["RGB16"], np.stack([grey.astype(np.uint16) * 257] * 3, axis=2))
    return paths


MODE_MESSAGES = {"L": "got image mode 'L'", "I;16": "got image mode 'I;16'",
                 "LA": "got image mode 'LA'", "RGB16": "got image mode 'RGB' with 16-bit samples"}


def test_greyscale_and_16bit_pngs_are_refused_naming_file_and_mode(tmp_path, decoder):
    for mode, path in _refused_pngs(tmp_path).items():
        for read in (read_id_png, panoptic_io.read_id_png_packed):
            with pytest.raises(ValueError, match="a panoptic id PNG must be RGB") as err:
                read(path)
            assert str(err.value).startswith(f"{path}: ") and MODE_MESSAGES[mode] in str(err.value)


def test_truncated_and_non_png_files_name_the_file(tmp_path, decoder):
    path = _id_pngs(tmp_path)["rgb"]
    path.write_bytes(path.read_bytes()[:60])
    for read in (read_id_png, panoptic_io.read_id_png_packed):
        with pytest.raises(ImageReadError, match="cannot read as a PNG") as err:
            read(path)
        assert err.value.path == str(path) and str(err.value).startswith(f"{path}: ")
    jpeg = tmp_path / "ids.png"
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")  # lossy: ids would not survive
    with pytest.raises(ImageReadError, match=r"ids\.png: not a PNG file"):
        read_id_png(jpeg)


@pytest.mark.parametrize("mode", ["I;16", "RGB16"])
def test_dataset_refuses_16bit_id_png_naming_file_and_mode(small_copy, tmp_path, mode):
    """A 16-bit RGB PNG was read by Pillow as 8-bit RGB (high bytes): silently wrong ids."""
    root, _ = small_copy
    (root / "panoptic" / "000002.png").write_bytes(_refused_pngs(tmp_path)[mode].read_bytes())
    ds = PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic")
    with pytest.raises(ValueError, match=r"000002\.png: a panoptic id PNG must be RGB") as err:
        ds[1]
    assert MODE_MESSAGES[mode] in str(err.value)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint16, np.float64])
def test_id_to_rgb_follows_cocos_formula(dtype):
    """R = id mod 256, G = id // 256 mod 256, B = id // 256^2 (COCO panoptic), whatever the dtype."""
    from panfpn.data.panoptic_io import id_to_rgb, rgb_to_id

    top = min(1 << 24, np.iinfo(dtype).max + 1 if np.dtype(dtype).kind in "iu" else 1 << 24)
    ids = np.random.default_rng(0).integers(0, top, size=(7, 9)).astype(dtype)
    ids[0, :3] = [0, top - 1, 256]
    rgb = id_to_rgb(ids)
    wide = ids.astype(np.int64)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3) and rgb.flags.c_contiguous
    assert np.array_equal(rgb[..., 0], wide % 256) and np.array_equal(rgb[..., 1], wide // 256 % 256)
    assert np.array_equal(rgb[..., 2], wide // 65536)
    assert np.array_equal(rgb_to_id(rgb), wide)
    for bad in (-1, 1 << 24):
        with pytest.raises(ValueError, match="2\\^24"):
            id_to_rgb(np.array([[bad]], dtype=np.int64))


def test_pngs_pillow_refuses_as_decompression_bombs_are_refused_by_every_decoder(tmp_path, decoder,
                                                                                monkeypatch):
    """panopticapi reads id PNGs with Pillow, which refuses more than 2 x Image.MAX_IMAGE_PIXELS
    pixels (178,956,970 by default: a few-kB PNG can declare them); Wuffs and pyspng decoded them
    (gigabytes of pixels) and scored what panopticapi refuses. The limit is lowered here so that a
    small file is over it; under it (where Pillow only warns) every decoder reads."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    over, under = tmp_path / "over.png", tmp_path / "under.png"
    Image.new("RGB", (50, 41), (1, 2, 3)).save(over)  # 2050 pixels
    Image.new("RGB", (50, 40), (1, 2, 3)).save(under)  # 2000
    with pytest.raises(Image.DecompressionBombError), Image.open(over) as img:
        img.load()
    for read in (read_id_png, panoptic_io.read_id_png_packed):
        with pytest.raises(ImageReadError, match=r"over\.png: 50x41 = 2050 pixels, more than") as err:
            read(over)
        assert "MAX_IMAGE_PIXELS" in str(err.value)
        with pytest.warns(Image.DecompressionBombWarning) if decoder == "pillow" else nullcontext():
            assert (read(under) & 0xFFFFFF == 1 + 2 * 256 + 3 * 65536).all()


def _png_with_idat(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_image_data_pillow_reads_but_wuffs_refuses_is_read_with_every_decoder(tmp_path, decoder):
    """Wuffs refuses a zlib stream holding bytes after the last row ('too much data') or one
    without its Adler-32 trailer, where Pillow (so panopticapi) and libspng read the rows: with
    Wuffs installed such PNGs were refused, scored without it."""
    rgb = np.random.default_rng(6).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(5))
    ids = rgb.astype(np.int64) @ np.array([1, 256, 65536])
    for name, idat in {"extra_row": zlib.compress(rows + b"\x00" + rgb[0].tobytes()),
                       "no_adler32": zlib.compress(rows)[:-4]}.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png_with_idat(6, 5, idat))
        with Image.open(path) as img:
            np.testing.assert_array_equal(np.asarray(img), rgb, err_msg=name)
        np.testing.assert_array_equal(read_id_png(path), ids, err_msg=name)
        np.testing.assert_array_equal(panoptic_io.read_id_png_packed(path) & 0xFFFFFF, ids, err_msg=name)


def test_a_damaged_png_is_refused_by_every_decoder(tmp_path, decoder):
    """A flipped bit in the image data: Wuffs and libspng skip the checksums and decode other ids
    without a word (554 of the 1,232 single-bit flips of this file do); Pillow, as panopticapi
    reads it, fails on the zlib checksum. Every chunk's CRC is checked before decoding."""
    rng = np.random.default_rng(0)
    ids = np.kron(rng.integers(0, 1 << 24, (4, 5)), np.ones((8, 8), np.int64))
    good = tmp_path / "good.png"
    Image.fromarray(np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1).astype(np.uint8)).save(good)
    png = good.read_bytes()
    damaged = bytearray(png)
    damaged[png.index(b"IDAT") + 4 + 3] ^= 0b10  # the 4th byte of the zlib stream
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(Exception):  # the file is damaged for Pillow too
        with Image.open(bad) as img:
            img.load()
    for read in (read_id_png, panoptic_io.read_id_png_packed):
        np.testing.assert_array_equal(read(good) & 0xFFFFFF, ids)
        with pytest.raises(ImageReadError, match=r"bad\.png: damaged PNG: the checksum of its 'IDAT' chunk"):
            read(bad)
    header = bytearray(png)
    header[29] ^= 1  # IHDR's CRC
    bad.write_bytes(bytes(header))
    with pytest.raises(ImageReadError, match="checksum of its 'IHDR' chunk"):
        read_id_png(bad)
