"""The fastest PNG path for id maps: Wuffs (Google's memory-safe decoder, the optional ``pywuffs``).

On COCO-size panoptic PNGs Wuffs decodes about 2.3x faster than libspng (pyspng) with the same
pixels (bench/pq.py; tests/data/test_wuffs_png.py). It is used only where its RGB output is the
file's samples unchanged: 8-bit truecolour PNGs (colour type 2), not interlaced, without a tRNS
chunk (Wuffs turns a tRNS colour into transparent black where libspng and Pillow keep the colour)
and not animated (of an APNG whose IDAT image is not a frame, Wuffs returns the first frame where
libspng and Pillow, as panopticapi reads it, return the IDAT image).
The same holds for 16-bit greyscale PNGs (Cityscapes' ``*_gtFine_instanceIds.png``), decoded
to their 16-bit samples (:func:`decode_plain_grey16`; 3.2 ms against Pillow's 14.7 ms at 2048x1024).
Every other PNG, and every machine without pywuffs, takes the caller's other decoder.
"""

from __future__ import annotations

import threading

import numpy as np

from panfpn.utils.png import png_chunks

try:  # optional: pip install "panfpn[fast]"
    from pywuffs import ImageDecoderType, PixelFormat
    from pywuffs.aux import ImageDecoder, ImageDecoderConfig
except ImportError:  # pragma: no cover - depends on the environment
    ImageDecoder = None

__all__ = ["available", "decode_plain_grey16", "decode_plain_packed", "decode_plain_rgb", "is_plain_grey16",
           "is_plain_rgb"]

_LOCAL = threading.local()  # one decoder per thread (a decoder holds its buffers between calls)
_GREY, _TRUECOLOUR, _NOT_INTERLACED = 0, 2, 0


def available() -> bool:
    """Whether pywuffs is installed."""
    return ImageDecoder is not None


def is_plain_rgb(data: bytes) -> bool:
    """Whether a PNG (signature and IHDR already checked) is 8-bit RGB, not interlaced, and has no
    tRNS or acTL (animation) chunk before its image data: the files whose Wuffs RGB output is
    exactly their IDAT samples."""
    return _is_plain(data, 8, _TRUECOLOUR)


def is_plain_grey16(data: bytes) -> bool:
    """Whether a PNG (signature and IHDR already checked) is 16-bit greyscale, not interlaced, with
    no tRNS or acTL chunk before its image data: the files :func:`decode_plain_grey16` reads exactly."""
    return _is_plain(data, 16, _GREY)


def _is_plain(data: bytes, bit_depth: int, colour_type: int) -> bool:
    if len(data) < 29 or data[24] != bit_depth or data[25] != colour_type or data[28] != _NOT_INTERLACED:
        return False
    for _, kind, _ in png_chunks(data):
        if kind in (b"IDAT", b"IEND"):
            return True
        if kind in (b"tRNS", b"acTL"):
            return False
    return True  # cut short before any image data: Wuffs reports the truncation


def _decoder(pixel_format_name: str):
    """This thread's Wuffs PNG decoder writing ``pixel_format_name`` (one per thread and format:
    a decoder keeps its buffers between calls)."""
    decoders = getattr(_LOCAL, "decoders", None)
    if decoders is None:
        decoders = _LOCAL.decoders = {}
    decoder = decoders.get(pixel_format_name)
    if decoder is None:
        config = ImageDecoderConfig()
        config.enabled_decoders = [ImageDecoderType.PNG]
        config.pixel_format = getattr(PixelFormat, pixel_format_name)
        decoder = decoders[pixel_format_name] = ImageDecoder(config)
    return decoder


def _decode(data: bytes, pixel_format_name: str) -> np.ndarray:
    result = _decoder(pixel_format_name).decode(data)
    if result.error_message:
        raise ValueError(result.error_message)
    return result.pixbuf


def decode_plain_rgb(data: bytes) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of a PNG for which :func:`is_plain_rgb` holds; ValueError with Wuffs'
    message when it cannot decode it (truncated, corrupt)."""
    return _decode(data, "RGB")


def decode_plain_packed(data: bytes) -> np.ndarray:
    """uint32 ``[H, W]`` of a PNG for which :func:`is_plain_rgb` holds: each pixel's bytes R, G,
    B, 255 read as one little-endian word, so ``word & 0xFFFFFF`` is its panoptic id.

    Wuffs writes the 4-byte pixels in one pass (~5 % slower than 3-byte RGB); one word per pixel
    makes the id maps' change scan one comparison per pixel instead of three. ValueError as
    :func:`decode_plain_rgb`.
    """
    rgba = _decode(data, "RGBA_NONPREMUL")
    return rgba.view("<u4").reshape(rgba.shape[:2])


def decode_plain_grey16(data: bytes) -> np.ndarray:
    """uint16 ``[H, W]``: the samples of a PNG for which :func:`is_plain_grey16` holds; ValueError
    as :func:`decode_plain_rgb`."""
    grey = _decode(data, "Y_16LE")  # uint8 [H, W, 2]: each sample's two bytes, little-endian
    return grey.view("<u2").reshape(grey.shape[:2]).astype(np.uint16, copy=False)
