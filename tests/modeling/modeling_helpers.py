"""Helpers for the model tests (imported by test files): config composition, tiny random batches, output checks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from config_helpers import compose_config


def compose_model_config(model: str, data: str = "synthetic", overrides: tuple[str, ...] = ()):
    """The root config with ``model=<model>`` and ``data=<data>`` (class counts come from data)."""
    # output_dir: a run dir outside the checkout (export_from_config writes its log.txt there)
    return compose_config([f"model={model}", f"data={data}", *overrides],
                          output_dir=Path(tempfile.gettempdir()) / "panfpn-test-model-config")


def make_batch(sizes, orig_sizes, *, num_things: int, num_sem: int, seed: int = 0) -> dict:
    """A collated batch (docs/interfaces.md section 2) of random images with 1-3 random
    rectangular-ish instances each; ``sizes`` are unpadded (H, W), padded to a multiple of 32."""
    g = torch.Generator().manual_seed(seed)
    hp = -(-max(h for h, _ in sizes) // 32) * 32
    wp = -(-max(w for _, w in sizes) // 32) * 32
    images = torch.zeros((len(sizes), 3, hp, wp), dtype=torch.uint8)
    sem_seg = torch.full((len(sizes), hp, wp), 255, dtype=torch.long)
    instances = []
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        sem_seg[i, :h, :w] = torch.randint(0, num_sem, (h, w), generator=g)
        n = int(torch.randint(1, 4, (1,), generator=g))
        masks = torch.zeros((n, h, w), dtype=torch.uint8)
        boxes = torch.zeros((n, 4))
        for j in range(n):
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
            y1, x1 = y0 + int(torch.randint(8, h // 2, (1,), generator=g)), x0 + int(torch.randint(8, w // 2, (1,), generator=g))
            masks[j, y0:y1, x0:x1] = 1
            masks[j, y0, x0] = 0  # not a perfect rectangle
            boxes[j] = torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
        instances.append({"boxes": boxes, "labels": torch.randint(0, num_things, (n,), generator=g),
                          "masks": masks})
    return {"images": images, "image_sizes": list(sizes), "orig_sizes": list(orig_sizes),
            "instances": instances, "sem_seg": sem_seg,
            "image_ids": list(range(len(sizes))), "file_names": [f"{i}.png" for i in range(len(sizes))]}


def check_panoptic(result: dict, orig_size, *, num_things: int, num_sem: int, thing_sem_labels) -> None:
    """Assert the per-image eval dict follows the output contract and the id map is a partition
    that agrees with its segment list."""
    id_map, segments = result["panoptic"]
    assert id_map.dtype == torch.int32 and tuple(id_map.shape) == tuple(orig_size)
    ids = [s["id"] for s in segments]
    assert len(set(ids)) == len(ids) and all(i > 0 for i in ids)
    present = set(torch.unique(id_map).tolist()) - {0}
    assert present == set(ids), f"ids in map {sorted(present)} != segment ids {sorted(ids)}"
    for s in segments:
        assert s["area"] == int((id_map == s["id"]).sum()) > 0
        if s["isthing"]:
            assert 0 <= s["category"] < num_things and isinstance(s["score"], float)
        else:
            assert 0 <= s["category"] < num_sem and s["category"] not in thing_sem_labels
            assert s["score"] is None
    inst = result["instances"]
    k = len(inst["scores"])
    assert inst["boxes"].shape == (k, 4) and inst["labels"].dtype == torch.int64
    assert inst["masks"].dtype == torch.bool and tuple(inst["masks"].shape) == (k, *orig_size)
    h0, w0 = orig_size
    assert (inst["boxes"][:, 0::2] <= w0).all() and (inst["boxes"][:, 1::2] <= h0).all()
    assert (inst["boxes"] >= 0).all()
    assert result["sem_seg"].dtype == torch.int64 and tuple(result["sem_seg"].shape) == tuple(orig_size)


def random_torchvision_r50(seed: int = 5) -> torch.nn.Module:
    """A torchvision ResNet-50 in eval mode with random weights and BN statistics that are not the
    identity, so a misplaced stride, channel order or norm shows in its features."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.resnet50().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net
