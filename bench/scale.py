"""Opening a COCO-size panoptic JSON: time, main-process memory, DataLoader workers' private memory.

Generates a COCO-panoptic JSON of COCO train2017's size (118,287 images, 11 segments each by
default; ``--preset cityscapes``: 2,975 images with string ids), then measures, each in a fresh
subprocess so that the figures do not mix:

- ``old``: the records as a list of Python objects parsed from the JSON (how PanopticDataset
  kept them before panfpn.data.records), the reference of the ratios;
- ``cold``: PanopticDataset with no record cache (parses, validates, writes the cache);
- ``warm``: PanopticDataset from the cache written by ``cold`` (memory-mapped).

For each: open time, main-process RSS growth (and its anonymous part), then two epochs over the
records with 4 DataLoader workers whose ``__getitem__`` only touches the record (no images):
each worker's private memory (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup) at
its start and after each epoch, and the time per epoch.

    .venv/bin/python bench/scale.py [--images 118287] [--segments 11] [--workers 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1 << 20


def generate(path: Path, images: int, segments: int, string_ids: bool) -> None:
    """A COCO-panoptic JSON with COCO's categories and entries shaped like COCO's."""
    from panfpn.data.builtin_meta import coco_panoptic_categories

    cats = coco_panoptic_categories()
    cat_ids = np.array([c["id"] for c in cats])
    rng = np.random.default_rng(0)
    imgs, anns = [], []
    for i in range(images):
        image_id = f"city_{i:06d}_000019" if string_ids else i + 1
        stem = image_id if string_ids else f"{i + 1:012d}"
        imgs.append({"id": image_id, "file_name": f"{stem}.jpg", "height": 480, "width": 640})
        seg_ids = int(rng.integers(1, 1 << 23)) + np.cumsum(rng.integers(1, 50_000, segments))
        cat = cat_ids[rng.integers(0, len(cat_ids), segments)]
        box = rng.integers(0, 400, (segments, 4))
        anns.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": [
            {"id": int(seg_ids[k]), "category_id": int(cat[k]), "iscrowd": int(k == 0),
             "bbox": box[k].tolist(), "area": int(box[k, 2] * box[k, 3])} for k in range(segments)]})
    with open(path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": imgs, "annotations": anns,
                   "categories": cats}, f)


def _status_kb(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def private_mb(pid: int) -> tuple[float, float]:
    """(Private_Clean, Private_Dirty) of process ``pid`` in MB."""
    got = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty"):
                got[key] = int(rest.split()[0]) / 1024
    return got["Private_Clean"], got["Private_Dirty"]


class RecordsOnly:
    """Dataset over ``records`` whose items only touch the record: ``(worker pid, a number)``."""

    def __init__(self, records) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, int]:
        rec = self.records[i]
        touched = sum(s["category_id"] + s["area"] + len(s["bbox"]) for s in rec.segments)
        return os.getpid(), touched + len(rec.file_name) + len(rec.png_name)


def open_old(json_file: Path) -> list:
    """The pre-RecordStore storage: the JSON parsed and validated into a list of records."""
    from panfpn.utils.json_file import load_json
    from panfpn.data.records import Record
    from panfpn.data.validate import check_categories, index_images, pair_annotations

    data = load_json(json_file)
    cats = check_categories(data["categories"], json_file)
    images = index_images(data["images"], json_file)
    return [Record(*row) for row in pair_annotations(data["annotations"], images, json_file, cats)]


def _epochs(records, workers: int, epochs: int = 2) -> dict:
    import multiprocessing as mp

    import torch
    from torch.utils.data import DataLoader

    pids = mp.get_context("fork").SimpleQueue()
    loader = DataLoader(RecordsOnly(records), batch_size=64, shuffle=True, num_workers=workers,
                        persistent_workers=True, collate_fn=lambda b: sum(v for _, v in b),
                        worker_init_fn=lambda _: pids.put(os.getpid()),
                        generator=torch.Generator().manual_seed(0), multiprocessing_context="fork")
    out: dict = {"epoch_s": [], "private_mb": []}
    for epoch in range(epochs):
        it = iter(loader)
        if epoch == 0:
            worker_pids = [pids.get() for _ in range(workers)]
            out["private_mb"].append([private_mb(p) for p in worker_pids])
        t0 = time.perf_counter()
        total = sum(it)
        out["epoch_s"].append(time.perf_counter() - t0)
        out["private_mb"].append([private_mb(p) for p in worker_pids])
        assert total > 0
    return out


def measure(mode: str, json_file: Path, cache_dir: Path, workers: int) -> dict:
    """Figures of one approach, in this (fresh) process."""
    from panfpn.data.dataset import PanopticDataset

    gc.collect()
    rss0, anon0 = _status_kb("self", "VmRSS"), _status_kb("self", "RssAnon")
    t0 = time.perf_counter()
    if mode == "old":
        records = open_old(json_file)
    else:
        records = PanopticDataset(json_file, json_file.parent, json_file.parent,
                                  record_cache=True, cache_dir=cache_dir).records
    open_s = time.perf_counter() - t0
    gc.collect()
    rss1, anon1 = _status_kb("self", "VmRSS"), _status_kb("self", "RssAnon")
    return {"mode": mode, "images": len(records), "open_s": open_s,
            "rss_growth_mb": (rss1 - rss0) / 1024, "anon_growth_mb": (anon1 - anon0) / 1024,
            **_epochs(records, workers)}


def _run(mode: str, a: argparse.Namespace, json_file: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, "--json", str(json_file),
           "--cache-dir", str(cache_dir), "--workers", str(a.workers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"measuring {mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(r: dict, ref: dict) -> None:
    start = r["private_mb"][0]
    end = r["private_mb"][-1]
    growth = [sum(e) - sum(s) for s, e in zip(start, end)]
    dirty = [e[1] - s[1] for s, e in zip(start, end)]
    print(f"{r['mode']:>5}: open {r['open_s']:6.2f} s ({r['open_s'] / ref['open_s']:.2f}x old) | "
          f"main RSS +{r['rss_growth_mb']:6.1f} MB (anon +{r['anon_growth_mb']:6.1f}) | "
          f"worker private at start {np.mean([sum(s) for s in start]):5.1f} MB, growth over "
          f"{len(r['epoch_s'])} epochs max {max(growth):6.1f} MB (dirty max {max(dirty):6.1f}) | "
          f"epoch {np.mean(r['epoch_s']):5.2f} s ({np.mean(r['epoch_s']) / np.mean(ref['epoch_s']):.2f}x old)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--segments", type=int, default=11)
    p.add_argument("--preset", choices=["coco", "cityscapes"], default="coco",
                   help="cityscapes: 2,975 images, string ids (overrides --images, --segments 25)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON (default: temp)")
    p.add_argument("--measure", choices=["old", "cold", "warm"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.json, a.cache_dir, a.workers)))
        return
    if a.preset == "cityscapes":
        a.images, a.segments = 2975, 25
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        json_file = out / f"panoptic_{a.preset}_{a.images}x{a.segments}.json"
        t0 = time.perf_counter()
        if not json_file.is_file():  # the content depends only on the name's parameters
            generate(json_file, a.images, a.segments, a.preset == "cityscapes")
        print(f"{json_file.name}: {a.images} images x {a.segments} segments, "
              f"{json_file.stat().st_size / MB:.0f} MB (generated in {time.perf_counter() - t0:.0f} s); "
              f"{a.workers} workers, 2 epochs over the records")
        cache_dir = Path(tmp) / "cache"
        results = {m: _run(m, a, json_file, cache_dir) for m in ("old", "cold", "warm")}
        for r in results.values():
            _report(r, results["old"])


if __name__ == "__main__":
    main()
