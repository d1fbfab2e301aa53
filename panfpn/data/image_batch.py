"""The eval batch of a model from images in memory (a notebook, a script): :func:`image_batch`.

A model reads ``images`` (uint8 RGB ``[B, 3, Hp, Wp]``, zero-padded), ``image_sizes`` (each image's
size in that tensor) and ``orig_sizes`` (the size its outputs come back at): docs/interfaces.md
section 2. Made by hand, two pitfalls give wrong outputs without an error: float images in [0, 1]
(the models normalise 0..255 values) and BGR arrays (OpenCV's, Detectron2's default input) where
the models take RGB. This builds the batch from a list of images of any sizes, resized by the test
transform as the tools resize them, and refuses what it cannot tell apart.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from panfpn.data.size_limits import SIZE_DIVISIBILITY
from panfpn.data.transforms import Transform, check_test_transform

__all__ = ["image_batch"]


def _as_chw(image: Any, index: int) -> torch.Tensor:
    """One image as uint8 ``[3, H, W]``: a torch tensor ``[3, H, W]`` or a numpy array ``[H, W, 3]``
    (as :func:`panfpn.data.image_io.read_image` and PIL give); anything else is an error naming it."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images[{index}]: a numpy image must be [H, W, 3], got {list(image.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{index}]: a tensor image must be [3, H, W], got {list(image.shape)}")
        tensor = image
    else:
        raise TypeError(f"images[{index}]: expected a torch tensor [3, H, W] or a numpy array [H, W, 3], "
                        f"got {type(image).__name__}")
    if tensor.dtype != torch.uint8:
        raise ValueError(f"images[{index}] is {tensor.dtype}: give uint8 0..255 (a float image in [0, 1] "
                         "would be read as almost black); e.g. (x * 255).round().to(torch.uint8)")
    if tensor.shape[1] < 1 or tensor.shape[2] < 1:
        raise ValueError(f"images[{index}] is empty: {list(tensor.shape)}")
    return tensor


def image_batch(images: Sequence[Any], *, transform: Transform | None = None,
                channels: Literal["RGB", "BGR"] = "RGB",
                size_divisibility: int = SIZE_DIVISIBILITY) -> dict[str, Any]:
    """The eval batch of ``images`` (docs/interfaces.md section 2, the keys a model reads).

    Args:
        images: uint8 torch ``[3, H, W]`` or numpy ``[H, W, 3]``, any sizes; not modified.
        transform: the test transform, e.g. ``ResizeShortestEdge([800], max_size=1333)``; None
            keeps each size. The outputs come back at each image's size as given. A flip or a
            crop (a training transform) is refused: the outputs would be mirrored or shifted.
        channels: ``"BGR"`` for OpenCV / Detectron2-style arrays (flipped to the models' RGB).
        size_divisibility: the padded size is a multiple of this (the models need 32).

    Returns:
        ``{"images": uint8 [B, 3, Hp, Wp], "image_sizes": [(H, W)], "orig_sizes": [(H0, W0)]}``.
    """
    if transform is not None:
        check_test_transform(transform, "image_batch's transform")
    if channels not in ("RGB", "BGR"):
        raise ValueError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
    if isinstance(images, (torch.Tensor, np.ndarray)) or not len(images):
        raise ValueError("images must be a non-empty list of images (one tensor or array each)")
    resized, orig_sizes = [], []
    for i, image in enumerate(images):
        chw = _as_chw(image, i)
        if channels == "BGR":
            chw = chw.flip(0)
        h0, w0 = int(chw.shape[1]), int(chw.shape[2])
        if transform is not None:  # joint transforms; a 1-byte placeholder map keeps the resize cheap
            chw, _ = transform(chw, torch.zeros((h0, w0), dtype=torch.uint8))
        resized.append(chw)
        orig_sizes.append((h0, w0))
    sizes = [(int(x.shape[1]), int(x.shape[2])) for x in resized]
    k = max(1, int(size_divisibility))
    hp, wp = -(-max(h for h, _ in sizes) // k) * k, -(-max(w for _, w in sizes) // k) * k
    batch = torch.zeros((len(resized), 3, hp, wp), dtype=torch.uint8)
    for i, (x, (h, w)) in enumerate(zip(resized, sizes)):
        batch[i, :, :h, :w] = x
    return {"images": batch, "image_sizes": sizes, "orig_sizes": orig_sizes}
