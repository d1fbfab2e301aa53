"""Throughput of the training data pipeline at the default synthetic config.

Reads, decodes, augments (configs/data/synthetic.yaml: multi-scale resize + flip), derives
targets and collates, with 0 (main process), 1 and 2 DataLoader workers; prints images/s and
the ratio to the main-process loader measured in the same run. No model runs, so this is the
most the pipeline can feed a training loop.

    .venv/bin/python bench/data_loading.py [--batches 100] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from panfpn.data.loader import build_training_loader

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "synthetic.yaml"


def images_per_second(dataset, *, batch_size: int, num_workers: int, batches: int) -> float:
    it = iter(build_training_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=0))
    for _ in range(3):  # warm-up: worker start, first file reads
        next(it)
    t0 = time.perf_counter()
    n = sum(len(b["image_ids"]) for b in itertools.islice(it, batches))
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    torch.set_num_threads(1)  # the main process's other threads belong to the model in training
    cfg = OmegaConf.create({"data": OmegaConf.load(CONFIG)})
    t0 = time.perf_counter()
    dataset = instantiate(cfg.data.train)
    print(f"dataset: {len(dataset)} images of {cfg.data.train.height}x{cfg.data.train.width} "
          f"(ready in {time.perf_counter() - t0:.1f} s; generated once, then cached)")
    batch = int(cfg.data.batch_size)
    ref = None
    for workers in a.workers:
        ips = images_per_second(dataset, batch_size=batch, num_workers=workers, batches=a.batches)
        ref = ref or ips
        print(f"num_workers={workers}: {ips:8.1f} images/s  ({ips / ref:.2f}x the main-process loader)")


if __name__ == "__main__":
    main()
