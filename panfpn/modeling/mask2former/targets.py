"""Training targets of mask classification from the batch: one binary mask and class per non-crowd
thing instance and per stuff label present, at the padded input size."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from panfpn.modeling.mask2former.classes import ClassSpace


def build_targets(batch: Mapping[str, Any], space: ClassSpace, padded: tuple[int, int], device: torch.device,
                  ignore_index: int = 255) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"labels": int64 [T], "masks": bool [T, Hp, Wp]}``: thing instances from
    ``batch["instances"]`` (crowd regions are not instances), then stuff from ``batch["sem_seg"]``."""
    hp, wp = padded
    thing_class = torch.tensor([space.thing_class(t) for t in range(sum(space.isthing))] or [0],
                               dtype=torch.int64, device=device)
    stuff_lut = torch.full((256,), -1, dtype=torch.int64, device=device)
    for k, (isthing, label) in enumerate(zip(space.isthing, space.label)):
        if not isthing:
            stuff_lut[label] = k
    out = []
    for i, inst in enumerate(batch["instances"]):
        masks = inst["masks"].to(device, non_blocking=True).bool()
        masks = F.pad(masks, (0, wp - masks.shape[-1], 0, hp - masks.shape[-2]))
        labels = thing_class[inst["labels"].to(device)]
        sem = batch["sem_seg"][i].to(device, non_blocking=True)
        sem = F.pad(sem, (0, wp - sem.shape[-1], 0, hp - sem.shape[-2]), value=ignore_index)
        present = torch.unique(sem)
        present = present[(present != ignore_index) & (present >= 0) & (present < 256)]
        stuff = stuff_lut[present]
        keep = stuff >= 0
        stuff_masks = sem[None] == present[keep][:, None, None]
        out.append({"labels": torch.cat((labels, stuff[keep])), "masks": torch.cat((masks, stuff_masks))})
    return out
