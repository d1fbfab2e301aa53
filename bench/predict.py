"""Throughput of tools/predict.py's loop (read + resize + model + PNG/JSON + overlay) vs the model alone.

Two setups, each measured in the same run:
  small   the synthetic CPU model (R18, 64 channels) on 128x128 images;
  r50     Panoptic FPN R50-FPN (COCO classes) on 800x1216 images (the COCO test size, so the
          test transform leaves them as they are).
For each: images/s of ``predict_images`` end to end (read, resize, model, id PNG + JSON, overlay;
writing runs in threads beside the model) and of the model's forward alone on the same
already-decoded batches (the reference), plus each host stage timed alone on the model's outputs,
as a share of the forward: on a GPU, where the forward is short, these are what bound throughput.

Random weights give no detection above 0.05 and so no thing segment to write or draw; by default
(``--full-load``) the box score threshold and the merge's score threshold are set to 0, so each
image carries up to 100 detections through mask pasting, the merge, the writer and the overlay.
Input images are the two real COCO samples resized to the setup's size.

    python bench/predict.py                       # CPU, 1 thread: 16 small images, 3 R50 images
    python bench/predict.py --device cuda --num-r50 50
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from panfpn.data.image_files import ImageFileDataset, list_image_files
from panfpn.engine.predict_run import collate_predict, predict_images
from panfpn.engine.job_setup import build_metadata
from panfpn.modeling.build import build_model
from panfpn.evaluation.label_mapping import model_segments_to_dataset
from panfpn.evaluation.writer import PanopticPredictionWriter
from panfpn.evaluation.visualize import panoptic_overlay

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
SAMPLES = ROOT / "tests" / "assets" / "coco_panoptic_sample" / "input_images"
SETUPS = {
    "small": (["model=panoptic_fpn_small", "data=synthetic"], (128, 128)),
    "r50": (["model=panoptic_fpn_r50", "data=coco_panoptic"], (800, 1216)),
}
FULL_LOAD = ["model.roi_heads.box_head.test.score_thresh=0.0", "model.merge.score_thresh=0.0"]


def build(name: str, full_load: bool, device: torch.device):
    overrides, size = SETUPS[name]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[*overrides, *(FULL_LOAD if full_load else []), "output_dir=/tmp"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights: irrelevant for speed
        model = build_model(cfg).to(device).eval()
    node = cfg.data.val.transforms
    return model, build_metadata(cfg), (instantiate(node) if node is not None else None), size


def write_inputs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SAMPLES.glob("*.jpg"))
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as img:
            img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR).save(folder / f"im{i:03d}.jpg",
                                                                              quality=90)
    return list_image_files(folder)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def forward_only(model, paths, transforms, batch_size: int, device: torch.device) -> tuple[float, list]:
    """Seconds of the model's forward over pre-decoded, pre-collated batches, and the outputs
    (id maps on the host, as predict reads them back)."""
    dataset = ImageFileDataset(paths, transforms=transforms, keep_original=False)
    batches = [collate_predict([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])[0]
               for i in range(0, len(dataset), batch_size)]
    outputs = []
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        for out in model(batch):
            id_map, segments = out["panoptic"]
            outputs.append((id_map.cpu().numpy(), segments))
    sync(device)
    return time.perf_counter() - start, outputs


def host_costs(paths, transforms, outputs, metadata, folder: Path) -> dict[str, float]:
    """Milliseconds per image of each host stage of predict, timed alone on the model's outputs."""
    dataset = ImageFileDataset(paths, transforms=transforms)
    writer = PanopticPredictionWriter(folder, metadata)
    (folder / "vis").mkdir(parents=True, exist_ok=True)
    t = {"read + resize": 0.0, "id PNG + JSON entry": 0.0, "overlay draw": 0.0, "overlay JPEG": 0.0}
    for i, (id_map, segments) in enumerate(outputs):
        start = time.perf_counter()
        sample = dataset[i]
        t["read + resize"] += time.perf_counter() - start
        segs = model_segments_to_dataset(segments, metadata)
        start = time.perf_counter()
        writer.add(f"im{i}", f"im{i}.jpg", id_map, segs)
        t["id PNG + JSON entry"] += time.perf_counter() - start
        start = time.perf_counter()
        vis = panoptic_overlay(sample["orig_image"], id_map, segs, metadata)
        t["overlay draw"] += time.perf_counter() - start
        start = time.perf_counter()
        Image.fromarray(vis).save(folder / "vis" / f"im{i}.jpg", quality=92)
        t["overlay JPEG"] += time.perf_counter() - start
    return {k: 1000 * v / len(outputs) for k, v in t.items()}


def run(name: str, args, device: torch.device) -> None:
    n = args.num_small if name == "small" else args.num_r50
    model, metadata, transforms, size = build(name, args.full_load, device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_inputs(tmp / "in", n, size)
        # warm up (allocator, kernels, lazy imports) on one image
        predict_images(model, paths[:1], metadata, tmp / "warm", transforms=transforms, device=device,
                       batch_size=1, progress=False)
        fwd, full = [], []
        for rep in range(args.repeats):
            seconds, outputs = forward_only(model, paths, transforms, args.batch_size, device)
            fwd.append(seconds)
            r = predict_images(model, paths, metadata, tmp / "out", transforms=transforms, device=device,
                               batch_size=args.batch_size, num_workers=args.workers, overwrite=True,
                               write_threads=args.write_threads, progress=False)
            full.append(r["seconds"])
        host = host_costs(paths, transforms, outputs, metadata, tmp / "host")
        anns = json.loads((tmp / "out" / "panoptic.json").read_text())["annotations"]
        segs = [len(a["segments_info"]) for a in anns]
        things = [sum(metadata.category(s["category_id"]).isthing for s in a["segments_info"]) for a in anns]
    fwd_ms, full_ms = 1000 * statistics.median(fwd) / n, 1000 * statistics.median(full) / n
    print(f"\n[{name}] {n} images {size[0]}x{size[1]}, batch {args.batch_size}, device {device}, "
          f"loader workers {args.workers}, write threads {args.write_threads}, median of {args.repeats}; "
          f"segments/image {np.mean(segs):.1f} (things {np.mean(things):.1f})")
    print(f"  model forward alone (reference)  {1000 / fwd_ms:8.2f} img/s  {fwd_ms:9.1f} ms/img")
    print(f"  predict end to end               {1000 / full_ms:8.2f} img/s  {full_ms:9.1f} ms/img   "
          f"ratio to forward {fwd_ms / full_ms:.2f}")
    print("  host stages, timed alone (ms/img, and as a share of the forward):")
    for key, ms in host.items():
        print(f"    {key:22s} {ms:8.1f} ms  {100 * ms / fwd_ms:6.1f} %")
    total = sum(host.values())
    print(f"    {'total':22s} {total:8.1f} ms  {100 * total / fwd_ms:6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--num-small", type=int, default=16)
    parser.add_argument("--num-r50", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (decode + resize)")
    parser.add_argument("--write-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--setups", nargs="+", default=["small", "r50"], choices=sorted(SETUPS))
    parser.add_argument("--no-full-load", dest="full_load", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("panfpn").setLevel(logging.WARNING)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    for name in args.setups:
        run(name, args, device)


if __name__ == "__main__":
    main()
