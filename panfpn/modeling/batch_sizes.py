"""Checks of a hand-made batch (docs/interfaces.md section 2) that every model runs first.

From Python a batch is often built by hand; a size that is not the image's would give outputs
without a word (an ``image_sizes`` entry larger than the padded tensor reads the padding as image,
an ``orig_sizes`` list one short drops an image). These checks name the key and the image index.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def check_images(images: Any) -> torch.Tensor:
    """``batch['images']`` as given, if it is one uint8 ``[B, 3, Hp, Wp]`` tensor; else a TypeError /
    ValueError saying what is expected (a list of per-image tensors, as Detectron2 takes, is not)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"batch['images'] must be one uint8 tensor [B, 3, Hp, Wp] (images zero-padded at "
                        f"the bottom/right, see docs/interfaces.md section 2), got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"batch['images'] must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    return images


def check_sizes(sizes: Sequence[Sequence[int]], key: str, count: int,
                bound: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """``sizes`` (``batch[key]``) as ``(H, W)`` ints: one per image of the ``count``, each at least 1
    and, with ``bound`` (the padded tensor's size), inside it; else a ValueError naming the image."""
    out = []
    for i, size in enumerate(sizes):
        if len(size) != 2:
            raise ValueError(f"batch['{key}'][{i}] must be (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            raise ValueError(f"batch['{key}'][{i}] is {(h, w)}: an image needs at least one pixel")
        if bound is not None and (h > bound[0] or w > bound[1]):
            raise ValueError(f"batch['{key}'][{i}] is {(h, w)}, larger than batch['images'] "
                             f"({bound[0]}x{bound[1]}): the size of image {i} as it is in the tensor")
        out.append((h, w))
    if len(out) != count:
        raise ValueError(f"batch['{key}'] has {len(out)} sizes for {count} images")
    return out


def check_targets(batch: Any, keys: Sequence[str]) -> None:
    """In train mode a model computes losses: a batch without ``keys`` (an inference batch given
    to a model left in train mode, as built) is an error saying to call ``model.eval()``."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"the model is in training mode, which computes losses from the targets "
                         f"{', '.join(repr(k) for k in missing)} the batch lacks; for inference call "
                         "model.eval() first (models are built in training mode)")


def check_batch(batch: Any, training: bool) -> None:
    """A model's input is one batch dict (docs/interfaces.md section 2), not Detectron2's list of
    per-image dicts; in eval it needs ``images``, ``image_sizes`` and ``orig_sizes``."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a model takes one batch dict with 'images', 'image_sizes' and 'orig_sizes' "
                        f"(docs/interfaces.md section 2), got {type(batch).__name__}; from images in memory "
                        "use panfpn.data.image_batch.image_batch(images)")
    missing = [k for k in ("images", "image_sizes") + (() if training else ("orig_sizes",)) if k not in batch]
    if missing:
        raise KeyError(f"the batch lacks {', '.join(repr(k) for k in missing)} (docs/interfaces.md section 2; "
                       "panfpn.data.image_batch.image_batch(images) makes one from images)")
