"""Batching of dataset samples into the padded batch of docs/interfaces.md section 2."""

from __future__ import annotations

from typing import Sequence

import torch

from panfpn.data.metadata import IGNORE_LABEL

from panfpn.data.size_limits import SIZE_DIVISIBILITY  # noqa: F401 (re-exported)


def _ceil_to(v: int, k: int) -> int:
    return (v + k - 1) // k * k if k > 1 else v


def collate_panoptic(samples: Sequence[dict], size_divisibility: int = SIZE_DIVISIBILITY) -> dict:
    """Pad and stack samples.

    Images are zero-padded and ``sem_seg`` is padded with 255 at the bottom/right to the
    batch's largest size rounded up to ``size_divisibility``: ``images`` uint8
    ``[B, 3, Hp, Wp]``, ``sem_seg`` int64 ``[B, Hp, Wp]``. Per-image entries (instances,
    sizes, ids, and for eval samples ``gt_panoptic``/``segments_info``/``image_paths``) are lists.
    """
    if not samples:
        raise ValueError("collate_panoptic got an empty list of samples")
    sizes = [tuple(s["image"].shape[-2:]) for s in samples]
    hp = _ceil_to(max(h for h, _ in sizes), size_divisibility)
    wp = _ceil_to(max(w for _, w in sizes), size_divisibility)
    images = torch.zeros((len(samples), 3, hp, wp), dtype=torch.uint8)
    sem_seg = torch.full((len(samples), hp, wp), IGNORE_LABEL, dtype=torch.int64)
    for i, (s, (h, w)) in enumerate(zip(samples, sizes)):
        images[i, :, :h, :w] = s["image"]
        sem_seg[i, :h, :w] = s["sem_seg"]
    batch = {
        "images": images,
        "image_sizes": sizes,
        "orig_sizes": [tuple(s["orig_size"]) for s in samples],
        "instances": [s["instances"] for s in samples],
        "sem_seg": sem_seg,
        "image_ids": [s["image_id"] for s in samples],
        "file_names": [s["file_name"] for s in samples],
    }
    if all("gt_panoptic" in s for s in samples):
        batch["gt_panoptic"] = [s["gt_panoptic"] for s in samples]
        batch["segments_info"] = [s["segments_info"] for s in samples]
        batch["image_paths"] = [s.get("image_path") for s in samples]
    return batch
