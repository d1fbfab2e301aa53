"""The void pixels of cityscapesScripts' instance-level evaluator, read from the image's own
``*_gtFine_instanceIds.png`` where the download's layout has it.

The official script calls a ground-truth pixel void when its instanceIds value equals the id of a
label ignored in evaluation (:data:`VOID_LABEL_IDS`). Its instance values (label id * 1000 + n) never
equal one, so the instances of caravan and trailer, ignored classes with instances, are not void
there, while createPanopticImgs leaves them out of the panoptic files like void: only the
instanceIds PNG gives the script's void exactly. In a Cityscapes download an image
``<root>/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` has it at
``<root>/gtFine/<split>/<city>/<frame>_gtFine_instanceIds.png`` (:func:`instance_ids_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from panfpn.data import wuffs_png
from panfpn.data.image_io import ImageReadError
from panfpn.data.panoptic_io import check_png_before_fast_decoding

# labels.py's labels with ignoreInEval, by id: unlabeled, ego vehicle, rectification border, out of
# roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
# trailer (license plate's id, -1, is no PNG value).
VOID_LABEL_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
_VOID_LUT = np.zeros(1 << 16, dtype=bool)  # instanceIds value (16 bits) -> void
_VOID_LUT[list(VOID_LABEL_IDS)] = True
_IMAGE_SUFFIX, _IDS_SUFFIX = "_leftImg8bit.png", "_gtFine_instanceIds.png"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY_MODES = ("I;16", "I;16B", "I;16L", "I", "L")  # Pillow's modes of greyscale PNGs: exact integers


def instance_ids_path(image_path: str | Path | None) -> Path | None:
    """Where a Cityscapes download keeps the instanceIds PNG of ``image_path`` (whether or not it is
    there); None for a path outside the ``leftImg8bit/<split>/<city>/`` layout."""
    if image_path is None:
        return None
    path = Path(image_path)
    if not path.name.endswith(_IMAGE_SUFFIX) or len(path.parents) < 4 or path.parents[2].name != "leftImg8bit":
        return None
    frame = path.name[:-len(_IMAGE_SUFFIX)]
    return path.parents[3] / "gtFine" / path.parents[1].name / path.parent.name / f"{frame}{_IDS_SUFFIX}"


def read_instance_ids(path: Path) -> np.ndarray:
    """``[H, W]`` integer values of a greyscale PNG, exactly; ImageReadError (a ValueError: tools
    exit 2 with its one line) naming the file when it is not a readable greyscale PNG. Wuffs reads plain 16-bit greyscale files (the Cityscapes ones) when installed
    (3.2 ms against Pillow's 14.7 ms for a 2048x1024 instanceIds-like PNG, one core); Pillow the rest.
    pyspng is no faster there (13.4 ms) and gives 16-bit greyscale as two channels, grey and alpha."""
    data = path.read_bytes()
    if (wuffs_png.available() and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR"
            and wuffs_png.is_plain_grey16(data)):
        check_png_before_fast_decoding(data, path)  # Wuffs checks neither size nor checksums
        try:
            return wuffs_png.decode_plain_grey16(data)
        except ValueError:  # Wuffs refuses some data Pillow reads (bytes after the last row): Pillow's answer
            pass
    try:
        with Image.open(path) as img:
            if img.format != "PNG" or img.mode not in _GREY_MODES:
                reason = f"{img.format} mode {img.mode}, not a greyscale PNG (Cityscapes' are 16-bit greyscale)"
                raise ImageReadError(f"instanceIds PNG {path} is {reason}", path=path, reason=reason)
            return np.asarray(img)
    except OSError as err:  # unreadable or truncated
        raise ImageReadError(f"cannot read instanceIds PNG {path}: {err}", path=path, reason=str(err)) from None


def official_void(path: Path, shape: tuple[int, int], image_id: Any) -> np.ndarray:
    """bool ``[H, W]``: the official script's void pixels of the instanceIds PNG ``path``;
    ImageReadError naming the file when its size is not ``shape`` (the panoptic ground truth's)."""
    ids = read_instance_ids(path)
    if tuple(ids.shape) != tuple(shape):
        reason = (f"{ids.shape[0]}x{ids.shape[1]} but the panoptic ground truth of image id {image_id!r} is "
                  f"{shape[0]}x{shape[1]}: are gtFine and the panoptic files from the same download?")
        raise ImageReadError(f"instanceIds PNG {path} is {reason}", path=path, reason=reason)
    if ids.dtype in (np.uint8, np.uint16):
        return _VOID_LUT[ids]
    return np.isin(ids, VOID_LABEL_IDS)


__all__ = ["VOID_LABEL_IDS", "instance_ids_path", "official_void", "read_instance_ids"]
