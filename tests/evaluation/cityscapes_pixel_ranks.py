"""Images and the per-rank entry point of test_cityscapes_pixel's two-process test, in a module that
imports little, so that each spawned process starts fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata
from panfpn.data.targets import semantic_map
from panfpn.evaluation.cityscapes_pixel import CityscapesPixelScores


def random_image(rng: np.random.Generator) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """(panoptic id map, segments, semantic prediction) of a 24 x 32 image: road, up to 3 cars and
    2 persons of random sizes, a prediction with 40 % random labels."""
    gt = torch.full((24, 32), 7, dtype=torch.int32)
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0}]
    for label_id, n in ((26, int(rng.integers(0, 4))), (24, int(rng.integers(0, 3)))):
        for k in range(n):
            y, x, h, w = (int(v) for v in rng.integers((0, 0, 1, 1), (20, 28, 8, 10)))
            gt[y:y + h, x:x + w] = label_id * 1000 + k
    segments += [{"id": int(i), "category_id": int(i) // 1000, "iscrowd": 0} for i in gt.unique().tolist() if i >= 1000]
    meta = cityscapes_panoptic_metadata()
    sem = semantic_map(gt, segments, meta)
    pred = torch.where(torch.from_numpy(rng.random(sem.shape) < 0.4), torch.from_numpy(rng.integers(0, 19, sem.shape)), sem)
    return gt, segments, pred


def feed(scores: CityscapesPixelScores, images, start: int = 0, step: int = 1) -> None:
    """Add ``images[start::step]`` (each rank its share, as the eval loop's shards)."""
    meta = cityscapes_panoptic_metadata()
    for gt, segments, pred in images[start::step]:
        scores.update(pred, semantic_map(gt, segments, meta), gt, segments)


def rank_main(rank: int, world: int, init_file: str, images, out_dir: str) -> None:
    """One rank of a gloo group: its images' scores, reduced over the ranks, to ``rank<k>.json``."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        scores = CityscapesPixelScores(cityscapes_panoptic_metadata())
        feed(scores, images, start=rank, step=world)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(scores.compute()))
    finally:
        dist.destroy_process_group()
