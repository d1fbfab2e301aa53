"""Decoding image files into uint8 RGB: the one reader of training, evaluation and predict.

Every image mode Pillow opens gives the pixels a viewer shows, as uint8 ``[H, W, 3]``:

- ``RGB``, ``L`` (grey repeated), ``1`` (0/255), ``P`` (palette colours; a transparent index keeps
  its palette colour), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to RGB.
- Alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``): dropped, the stored colour is
  kept (no compositing onto a background).
- Integer modes are scaled by the range of their stored type, never clipped: unsigned n-bit
  (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) ``>> (n - 8)``, so 65535 -> 255 and 256 -> 1;
  signed 32-bit ``I`` keeps ``[0, 2^31)`` as ``>> 23`` with negatives black, except that an
  ``I`` image from a PNG holds 16-bit samples (older Pillow) and is read as 16-bit.
- Float ``F`` has no fixed range; it is taken from the image's maximum: ``<= 1`` means
  ``[0, 1]`` (x 255), ``<= 255`` means ``[0, 255]``, larger means the 16-bit range
  ``[0, 65535]`` (/ 257). Negatives and NaN are black; values are rounded.

The EXIF orientation tag is applied (as viewers and Detectron2's ``read_image`` do), so the array
is upright and its size is the transposed one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112  # EXIF tag 274
# Orientations 5..8 swap width and height (transpose / rotate by 90 degrees).
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageReadError(ValueError):
    """A file is not an image Pillow can decode; the message names the file and the reason.

    Constructible from the message alone (DataLoader workers re-raise exceptions that way).
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.reason = reason if reason is not None else message

    @classmethod
    def for_file(cls, path: str | os.PathLike, reason: str) -> "ImageReadError":
        return cls(f"{path}: {reason}", path=path, reason=reason)


def _scale_integer(arr: np.ndarray, bits_from_png: bool) -> np.ndarray:
    """uint8 of an integer greyscale array, scaled by the range of its stored type."""
    if bits_from_png:  # Pillow < 10 opened 16-bit PNG greyscale as 'I'
        return (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
    bits = arr.dtype.itemsize * 8
    if arr.dtype.kind == "u":
        return (arr.astype(np.uint64) >> (bits - 8)).astype(np.uint8)
    return (np.clip(arr.astype(np.int64), 0, None) >> (bits - 9)).astype(np.uint8)


def _scale_float(arr: np.ndarray) -> np.ndarray:
    """uint8 of a float greyscale array: range [0, 1], [0, 255] or [0, 65535] by its maximum."""
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 1.0 / 257.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def to_rgb8(img: Image.Image, file_format: str | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB of a decoded Pillow image in any mode (module docstring).

    ``file_format``: the format the image was read from (default ``img.format``); an ``I``
    image from a PNG holds 16-bit samples.
    """
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img)
        from_png = mode == "I" and (file_format or img.format) == "PNG"
        grey = _scale_float(arr) if mode == "F" else _scale_integer(arr, from_png)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBa", "La"):  # premultiplied: undo it, then drop alpha like the others
        img = img.convert(mode.upper())
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # the palette colour of a transparent index, alpha dropped
    if img.mode in ("RGBA", "LA"):
        rgb = np.asarray(img)[..., : len(img.mode) - 1]
        return np.array(np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb)
    return np.array(img.convert("RGB"))  # a writable copy, as torch.from_numpy wants


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = upright, also when absent)."""
    return int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as uint8 ``[H, W, 3]`` RGB, upright (EXIF orientation applied).

    Raises:
        ImageReadError: the file is missing, truncated, corrupt or not an image (names the file).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            return to_rgb8(ImageOps.exif_transpose(img), img.format)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad files; report all
        raise ImageReadError.for_file(path, f"cannot read as an image ({type(e).__name__}: {e})") from None
