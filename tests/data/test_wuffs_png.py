"""The Wuffs path of the id-PNG reader gives libspng's and Pillow's colours, and leaves the PNGs
whose Wuffs RGB output would differ (tRNS, interlaced, palette, alpha) to the other decoders."""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from panfpn.data import wuffs_png
from panfpn.data.panoptic_io import decode_id_png_packed, decode_id_png_rgb, rgb_to_id
from panfpn.utils.png import encode_png

pytestmark = pytest.mark.skipif(not wuffs_png.available(),
                                reason="pywuffs is not installed (the 'fast' extra): no Wuffs path to test")
RNG = np.random.default_rng(0)


def pillow_png(array: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **options)
    return buf.getvalue()


def with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with a chunk inserted before its first IDAT (PNG spec 5.3: length, type, data, CRC)."""
    at = png.index(b"IDAT") - 4
    return png[:at] + struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) + png[at:]


def adam7_png(rgb: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG written from the PNG spec (Pillow cannot write one):
    the seven passes' pixels, each row with filter type 0, in one zlib stream."""
    h, w, _ = rgb.shape
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    raw = b"".join(b"\x00" + rgb[y, x0::dx].tobytes()
                   for y0, x0, dy, dx in passes if x0 < w for y in range(y0, h, dy))
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def id_map(h: int, w: int) -> np.ndarray:
    """A panoptic-like colour map: flat blocks (Pillow picks Up, Sub and Paeth rows for it) and noise."""
    blocks = np.kron(RNG.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    out = blocks[:h, :w].copy()
    out[: h // 4] = RNG.integers(0, 256, (h // 4, w, 3), dtype=np.uint8)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (41, 1), (67, 93), (480, 640)])
def test_wuffs_gives_the_files_colours(shape):
    array = id_map(*shape)
    for name, png in (("pillow", pillow_png(array)), ("pillow level 9", pillow_png(array, compress_level=9)),
                      ("ours", encode_png(array))):
        assert wuffs_png.is_plain_rgb(png), name
        got = wuffs_png.decode_plain_rgb(png)
        assert got.dtype == np.uint8 and np.array_equal(got, array), name
        assert np.array_equal(decode_id_png_rgb(png), array), name
        words = decode_id_png_packed(png)
        assert words.dtype == np.uint32 and words.shape == shape, name
        assert np.array_equal(words & 0xFFFFFF, rgb_to_id(array)), name


def test_pngs_wuffs_would_read_differently_go_to_the_other_decoder():
    array = id_map(16, 24)
    array[0, 0] = (10, 20, 30)
    trns = with_chunk(pillow_png(array), b"tRNS", struct.pack(">HHH", 10, 20, 30))
    interlaced = adam7_png(array)
    rgba = pillow_png(np.concatenate([array, np.full((16, 24, 1), 7, np.uint8)], axis=2))
    for name, png in (("tRNS", trns), ("interlaced", interlaced), ("RGBA", rgba)):
        assert not wuffs_png.is_plain_rgb(png), name
        assert np.array_equal(decode_id_png_rgb(png), array), name  # the colours as stored
        assert np.array_equal(decode_id_png_packed(png) & 0xFFFFFF, rgb_to_id(array)), name
    # what the check prevents: Wuffs makes the tRNS colour transparent black
    assert wuffs_png.decode_plain_rgb(trns)[0, 0].tolist() == [0, 0, 0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(interlaced))), array)  # the test file is right


def test_a_gama_chunk_changes_nothing():
    array = id_map(16, 24)
    png = with_chunk(pillow_png(array), b"gAMA", struct.pack(">I", 45455))
    assert wuffs_png.is_plain_rgb(png) and np.array_equal(decode_id_png_rgb(png), array)


def test_truncated_file_is_an_error():
    png = pillow_png(id_map(64, 64))
    with pytest.raises(ValueError, match="truncated"):
        wuffs_png.decode_plain_rgb(png[: len(png) // 2])
    assert not wuffs_png.is_plain_rgb(png[:28])  # a header cut short is left to the other decoder
    with pytest.raises(ValueError, match="cannot read as a PNG"):
        decode_id_png_rgb(png[:28], "cut.png")
    with pytest.raises(ValueError, match="cut.png: .*truncated"):
        decode_id_png_packed(png[: len(png) // 2], "cut.png")


def test_results_are_independent_arrays_and_threads_have_their_own_decoder():
    maps = [id_map(33, 47) for _ in range(8)]
    pngs = [encode_png(m) for m in maps]
    first = wuffs_png.decode_plain_rgb(pngs[0])
    wuffs_png.decode_plain_rgb(pngs[1])
    assert np.array_equal(first, maps[0])  # not overwritten by the next decode
    results: dict[int, bool] = {}

    def work(k: int) -> None:
        results[k] = all(np.array_equal(wuffs_png.decode_plain_rgb(pngs[(k + i) % 8]), maps[(k + i) % 8])
                         for i in range(40))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: True for k in range(4)}
