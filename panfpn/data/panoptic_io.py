"""Reading and writing COCO-panoptic id PNGs (id = R + 256 G + 256^2 B) and the boxes of their segments."""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
from PIL import Image

from panfpn.data import wuffs_png
from panfpn.data.image_io import ImageReadError
from panfpn.utils.png import png_chunks

try:  # optional (the "fast" extra): about 1.8x faster than Pillow on id PNGs
    import pyspng as _pyspng
except ImportError:  # pragma: no cover - depends on the environment
    _pyspng = None


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of an id PNG's pixels.

    rgb: uint8 ``[H, W, 3]``. Returns int32 ``[H, W]`` (ids < 2^24 fit), 0 = void.
    """
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: int ``[H, W]`` ids -> uint8 ``[H, W, 3]``."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("segment ids must lie in [0, 2^24) to be stored in an RGB PNG")
    # three byte-plane writes (each cast keeps the low byte): 0.3 ms at 640x480, where copying the
    # R, G, B bytes out of a 32-bit view took 1.1 ms (a strided copy numpy does element by element)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids
    rgb[..., 1] = ids >> 8
    rgb[..., 2] = ids >> 16
    return rgb


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> Pillow's name of the mode of its 8-bit (and lower) form.
_COLOUR_TYPE_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_ID_PNG_MODES = ("RGB", "RGBA", "P")  # read as RGB (alpha dropped, palette colours)


def id_png_decoder() -> str:
    """Which decoder :func:`decode_id_png_rgb` uses for 8-bit RGB id PNGs: ``"wuffs"`` (pywuffs)
    when installed, else ``"pyspng"`` when installed, else ``"pillow"``."""
    return "wuffs" if wuffs_png.available() else "pyspng" if _pyspng is not None else "pillow"


def _png_mode(data: bytes, path: str | os.PathLike) -> tuple[str, int]:
    """``(mode, bit depth)`` from a PNG's header (IHDR), before any decoding."""
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ImageReadError.for_file(path, "not a PNG file (panoptic id maps are PNGs)")
    depth, colour_type = data[24], data[25]
    if colour_type not in _COLOUR_TYPE_MODES:
        raise ImageReadError.for_file(path, f"not a valid PNG (colour type {colour_type})")
    mode = _COLOUR_TYPE_MODES[colour_type]
    if colour_type == 0 and depth in (1, 16):
        mode = "1" if depth == 1 else "I;16"
    return mode, depth


def decode_id_png_rgb(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """uint8 ``[H, W, 3]`` colours of an id PNG's bytes, checked and named after ``path``.

    8-bit RGB, RGBA (alpha dropped) and palette PNGs (palette colours; a transparent index keeps
    its colour) are read; greyscale and 16-bit PNGs cannot hold ids and are refused before
    decoding. Wuffs (pywuffs, ~2.3x faster than libspng) decodes plain 8-bit RGB PNGs when installed
    (:mod:`panfpn.data.wuffs_png`), pyspng (libspng, about 1.8x faster than Pillow) the rest when
    installed, else Pillow; all give the same colours (a file Wuffs refuses goes to the other
    decoder). More pixels than Pillow reads (2 x ``PIL.Image.MAX_IMAGE_PIXELS``) are refused.

    Raises:
        ImageReadError: not a PNG, truncated or corrupt (names the file).
        ValueError: a PNG of another mode or bit depth (names the file and the mode).
    """
    return _decode_id_png(data, path, packed=False)


def decode_id_png_packed(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """uint32 ``[H, W]`` of an id PNG's bytes whose low 24 bits are each pixel's id (the bytes R, G,
    B and one more, read as a little-endian word; the top byte is not part of the id).

    The form the PQ evaluator scans: one comparison per pixel finds where ids change. Same files,
    checks and errors as :func:`decode_id_png_rgb`.
    """
    return _decode_id_png(data, path, packed=True)


def _decode_id_png(data: bytes, path: str | os.PathLike, packed: bool) -> np.ndarray:
    mode, depth = _png_mode(data, path)
    if mode not in _ID_PNG_MODES or depth == 16:
        bits = " with 16-bit samples" if depth == 16 and mode != "I;16" else ""
        raise ValueError(f"{path}: a panoptic id PNG must be RGB (8 bits per channel; id = R + "
                         f"256 G + 256^2 B; RGBA and palette PNGs are read as RGB), got image mode "
                         f"{mode!r}{bits}")
    check_png_before_fast_decoding(data, path)
    wuffs_error = None
    if mode == "RGB" and wuffs_png.available() and wuffs_png.is_plain_rgb(data):
        try:
            return wuffs_png.decode_plain_packed(data) if packed else wuffs_png.decode_plain_rgb(data)
        except ValueError as e:  # Wuffs refuses some image data libspng and Pillow read (bytes
            wuffs_error = e  # after the last row, no Adler-32 trailer): theirs is the answer
    try:
        if _pyspng is not None:
            rgb = _pyspng.load(data, "RGB")
        else:
            with Image.open(io.BytesIO(data)) as img:  # via RGBA: no warning on a tRNS palette
                rgb = (np.asarray(img) if img.mode == "RGB"
                       else np.ascontiguousarray(np.asarray(img.convert("RGBA"))[..., :3]))
    except Exception as e:  # noqa: BLE001 - libspng and Pillow raise many types on bad files
        err = wuffs_error or e  # (Wuffs names the problem: "truncated input", ...)
        raise ImageReadError.for_file(path, f"cannot read as a PNG ({type(err).__name__}: {err})") from None
    return pack_rgb(rgb) if packed else rgb


def check_png_before_fast_decoding(data: bytes, path: str | os.PathLike) -> None:
    """What Pillow checks and Wuffs / libspng do not, for a PNG (signature and IHDR checked) about
    to be decoded by them: its pixel count and its chunk checksums (ImageReadError naming the file)."""
    _check_pixel_count(data, path)
    _check_chunk_crcs(data, path)


def _check_pixel_count(data: bytes, path: str | os.PathLike) -> None:
    """Refuse what Pillow (and so panopticapi) refuses as a decompression bomb: more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (None: no limit), whichever decoder reads the file; a
    PNG of a few kB can declare gigabytes of pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if limit is not None and width * height > 2 * limit:
        raise ImageReadError.for_file(
            path, f"{width}x{height} = {width * height} pixels, more than Pillow reads (2 x "
                  f"PIL.Image.MAX_IMAGE_PIXELS = {2 * limit}: a decompression bomb?)")


def _check_chunk_crcs(data: bytes, path: str | os.PathLike) -> None:
    """Refuse a PNG whose chunk checksums (CRC-32 of each chunk up to IEND) do not match: a damaged
    file. Wuffs and libspng skip these checks, so a flipped bit in the image data could decode to
    other ids without a word, where Pillow (and so panopticapi) fails on the zlib checksum. ~3 us
    per COCO-size file; a file cut short is left to the decoder, which reports the truncation."""
    view = memoryview(data)
    for pos, kind, end in png_chunks(data):
        if end + 4 > len(data):
            return
        if zlib.crc32(view[pos + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            raise ImageReadError.for_file(path, f"damaged PNG: the checksum of its {kind.decode('latin-1')!r} "
                                                f"chunk at byte {pos} does not match its content")
        if kind == b"IEND":
            return


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint32 ``[H, W]`` words of uint8 ``[H, W, 3]`` colours, ``word & 0xFFFFFF`` = id (the form of
    :func:`decode_id_png_packed`)."""
    words = np.empty((*rgb.shape[:2], 4), np.uint8)
    words[..., :3] = rgb
    words[..., 3] = 255
    return words.view("<u4").reshape(rgb.shape[:2])


def read_id_png_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[H, W, 3]`` colours of an id PNG file (see :func:`decode_id_png_rgb`)."""
    with open(path, "rb") as f:
        return decode_id_png_rgb(f.read(), path)


def read_id_png_packed(path: str | os.PathLike) -> np.ndarray:
    """uint32 ``[H, W]`` id words of an id PNG file (see :func:`decode_id_png_packed`)."""
    with open(path, "rb") as f:
        return decode_id_png_packed(f.read(), path)


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """Read an id PNG into int32 ``[H, W]`` segment ids, as stored (no EXIF orientation: id
    PNGs carry none, and COCO's are in the stored pixel order).

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file is not a PNG, truncated or corrupt (names the file).
        ValueError: the PNG is greyscale or 16-bit (names the file and the mode): it cannot hold ids.
    """
    return rgb_to_id(read_id_png_rgb(path))


def segment_areas_boxes(id_map: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """Pixel area and COCO box ``[x, y, w, h]`` of every id in an id map (void 0 included):
    the ``area`` and ``bbox`` of COCO-panoptic ``segments_info``.

    id_map: integer ``[H, W]``. Works on the runs of equal ids within each row (a few thousand
    in a 640x480 map), not on one mask per segment.
    """
    h, w = id_map.shape
    n = h * w
    if n == 0:
        return {}
    flat = np.ascontiguousarray(id_map).reshape(-1)
    starts_run = np.empty(n, bool)
    starts_run[0] = True
    np.not_equal(flat[1:], flat[:-1], out=starts_run[1:])
    starts_run[::w] = True  # a run never crosses a row end
    starts = np.flatnonzero(starts_run)
    lengths = np.diff(starts, append=n)
    y, x0 = np.divmod(starts, w)
    ids, inv = np.unique(flat[starts], return_inverse=True)
    k = ids.shape[0]
    area = np.bincount(inv, weights=lengths, minlength=k).astype(np.int64)
    x_min, y_min = np.full(k, w, np.int64), np.full(k, h, np.int64)
    x_end, y_end = np.zeros(k, np.int64), np.zeros(k, np.int64)
    np.minimum.at(x_min, inv, x0)
    np.minimum.at(y_min, inv, y)
    np.maximum.at(x_end, inv, x0 + lengths)
    np.maximum.at(y_end, inv, y + 1)
    return {int(i): (int(a), [int(x), int(t), int(xe - x), int(ye - t)])
            for i, a, x, t, xe, ye in zip(ids, area, x_min, y_min, x_end, y_end)}
