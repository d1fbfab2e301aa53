"""encode_png writes standard PNGs: Pillow and libspng (pyspng) decode the same pixels."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from panfpn.utils.atomic import save_png_atomic
from panfpn.utils.png import encode_png

RNG = np.random.default_rng(0)
CASES = {
    "rgb": RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8),
    "rgb 1x1": RNG.integers(0, 256, (1, 1, 3), dtype=np.uint8),
    "rgb one row": RNG.integers(0, 256, (1, 9, 3), dtype=np.uint8),
    "rgb one column": RNG.integers(0, 256, (9, 1, 3), dtype=np.uint8),
    "grey": RNG.integers(0, 256, (20, 31), dtype=np.uint8),
    "grey 16-bit": RNG.integers(0, 65536, (20, 31), dtype=np.uint16),
    "id map": np.kron(RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8)),
}


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, each CRC checked (PNG spec 5.3)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, payload = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0] == zlib.crc32(kind + payload)
        out.append((kind, payload))
        i += 12 + n
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_pillow_reads_the_same_pixels(name):
    array = CASES[name]
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n].ndim == 3])
def test_libspng_reads_the_same_pixels(name):
    pyspng = pytest.importorskip("pyspng", reason="pyspng (libspng) is the evaluator's fast decoder")
    assert np.array_equal(pyspng.load(encode_png(CASES[name])), CASES[name])


def test_header_and_chunk_layout():
    kinds = chunks(encode_png(CASES["grey 16-bit"]))
    assert [k for k, _ in kinds] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", kinds[0][1])
    assert (w, h, depth, colour, compression, filtering, interlace) == (31, 20, 16, 0, 0, 0, 0)
    w, h, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks(encode_png(CASES["rgb"]))[0][1])
    assert (w, h, depth, colour) == (53, 37, 8, 2)


def test_no_larger_than_pillow_on_an_id_map():
    buf = io.BytesIO()
    Image.fromarray(CASES["id map"]).save(buf, format="PNG")
    assert len(encode_png(CASES["id map"])) <= 1.1 * len(buf.getvalue())


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.int32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.uint16), np.zeros((0, 4), np.uint8)])
def test_refuses_what_it_cannot_write(bad):
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(bad)


def test_save_png_atomic_writes_the_file(tmp_path):
    path = save_png_atomic(tmp_path / "a.png", CASES["rgb"])
    assert np.array_equal(np.asarray(Image.open(path)), CASES["rgb"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
