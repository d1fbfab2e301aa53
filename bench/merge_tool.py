"""tools/merge.py's merge vs COCO panopticapi's combine converter, images per second, same inputs.

    python bench/merge_tool.py [--images 100] [--instances 100] [--workers 2] [--threads 2] [--rounds 3]
    python bench/merge_tool.py --device cuda      # our merge on the GPU (reading stays on the CPU)

Both read the same saved predictions from disk and write COCO-panoptic PNGs + JSON:

* ours: ``panfpn.engine.merge_run.merge_files`` (what ``tools/merge.py`` runs after composing the
  config), semantic predictions as label PNGs, Detectron2 rules (= panopticapi's combine rules);
* panopticapi: ``combine_predictions`` of ``panopticapi/combine_semantic_and_instance_predictions.py``
  (a per-image numpy/pycocotools loop in a process pool of ``cpu_count()`` processes; it needs the
  semantic predictions as a COCO semantic-segmentation results JSON, written here from the same
  label maps). panopticapi is not on PyPI: install it from its source
  (``pip install --no-deps /path/to/panopticapi``); without it only our side is timed.

Inputs (generated, fixed seed): 480x640 images; per image ``--instances`` detections with scores
uniform in [0.05, 1] (a detector's output after its 0.05 cut), masks as RLE from soft blobs of
varied size (a third are jittered duplicates), category ids of 80 things; a semantic map of 53 stuff
categories in coarse regions with the confident instances' thing categories painted in.
The two are timed alternately (``--rounds`` each, best taken), in-process, startup excluded; the
two outputs are checked to be the same partition with the same categories on every image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from merge import make_inputs  # bench/merge.py: the same synthetic detector output  # noqa: E402
from panfpn.data.panoptic_io import read_id_png
from panfpn.engine.merge_run import PANOPTIC_NAME, merge_files
from panfpn.modeling.merge import MergeThresholds

THING_IDS = list(range(1, 81))
STUFF_IDS = list(range(92, 145))


def categories() -> list[dict]:
    """80 thing + 53 stuff categories. Colours stay away from black: panopticapi's id generator
    jitters a thing's colour by up to +-30 per channel, and a colour of (0, 0, 0) is segment id 0,
    i.e. void."""
    rng = np.random.default_rng(0)
    return [{"id": i, "name": f"{'thing' if i in THING_IDS else 'stuff'}{i}", "isthing": int(i in THING_IDS),
             "color": [int(v) for v in rng.integers(40, 216, size=3)]} for i in THING_IDS + STUFF_IDS]


def write_inputs(root: Path, num_images: int, num_instances: int, size: tuple[int, int]) -> dict:
    """Saved predictions in both formats; returns the paths."""
    sem_dir = root / "semantic"
    sem_dir.mkdir(parents=True)
    images, results, sem_results = [], [], []
    for k in range(num_images):
        probs, scores, labels, sem = make_inputs(*size, num_instances, len(STUFF_IDS) + 1, seed=k,
                                                 device="cpu")
        image_id = 1000 + k
        name = f"{image_id:012d}"
        images.append({"id": image_id, "file_name": name + ".jpg", "height": size[0], "width": size[1]})
        masks = (probs >= 0.5).numpy()
        thing_ids = [THING_IDS[int(c) % len(THING_IDS)] for c in labels]
        for mask, score, cat in zip(masks, scores.tolist(), thing_ids):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": image_id, "category_id": cat, "score": round(score, 6),
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        ids = np.array(STUFF_IDS, dtype=np.int64)[sem.clamp(max=len(STUFF_IDS) - 1).numpy()]
        thing_region = sem.numpy() == len(STUFF_IDS)
        ids[thing_region] = _thing_owner(masks, scores, thing_ids, thing_region)
        Image.fromarray(ids.astype(np.uint8)).save(sem_dir / (name + ".png"))
        for cat in np.unique(ids):
            rle = mask_utils.encode(np.asfortranarray((ids == cat).astype(np.uint8)))
            sem_results.append({"image_id": image_id, "category_id": int(cat),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    paths = {"semantic_dir": sem_dir, "images_json": root / "images.json",
             "instances_json": root / "instances.json", "semseg_json": root / "semseg.json",
             "categories_json": root / "categories.json"}
    paths["images_json"].write_text(json.dumps({"images": images, "categories": categories()}))
    paths["instances_json"].write_text(json.dumps(results))
    paths["semseg_json"].write_text(json.dumps(sem_results))
    paths["categories_json"].write_text(json.dumps(categories()))
    return paths


def _thing_owner(masks: np.ndarray, scores: torch.Tensor, thing_ids: list[int],
                 region: np.ndarray) -> np.ndarray:
    """Thing category per pixel of ``region``: the highest-scoring mask covering it (else 1)."""
    owner = np.full(region.shape, THING_IDS[0], dtype=np.int64)
    for k in np.argsort(scores.numpy(), kind="stable"):
        owner[masks[k]] = thing_ids[k]
    return owner[region]


def run_ours(paths: dict, out: Path, workers: int, threads: int, device: str) -> None:
    merge_files(paths["semantic_dir"], paths["instances_json"], paths["images_json"], out,
                rules=MergeThresholds.detectron2(), device=torch.device(device), workers=workers,
                threads=threads)


def run_panopticapi(paths: dict, out: Path) -> None:
    from panopticapi.combine_semantic_and_instance_predictions import combine_predictions

    out.mkdir(parents=True, exist_ok=True)
    combine_predictions(str(paths["semseg_json"]), str(paths["instances_json"]), str(paths["images_json"]),
                        str(paths["categories_json"]), str(out / "png"), str(out / "panoptic.json"),
                        0.5, 0.5, 64 * 64)


def read_output(json_path: Path, png_dir: Path) -> dict:
    """image_id -> (segment id map, per-pixel category map) of a COCO-panoptic prediction."""
    out = {}
    for ann in json.loads(json_path.read_text())["annotations"]:
        ids = read_id_png(png_dir / ann["file_name"])
        uniq, inverse = np.unique(ids, return_inverse=True)
        cat_of = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        cats = np.array([cat_of.get(int(u), 0) for u in uniq])[inverse.reshape(ids.shape)]
        out[ann["image_id"]] = (ids, cats)
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two id maps split the pixels identically (segment ids may differ)."""
    pairs = np.unique(a.astype(np.int64) << 32 | b.astype(np.int64))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def check_same(ours_dir: Path, papi_dir: Path) -> int:
    ours = read_output(ours_dir / f"{PANOPTIC_NAME}.json", ours_dir / PANOPTIC_NAME)
    papi = read_output(papi_dir / "panoptic.json", papi_dir / "png")
    if ours.keys() != papi.keys():
        raise SystemExit(f"different images: {sorted(ours.keys() ^ papi.keys())[:5]}")
    for image_id, (ids, cats) in ours.items():
        if not (same_partition(ids, papi[image_id][0]) and np.array_equal(cats, papi[image_id][1])):
            raise SystemExit(f"image {image_id}: tools/merge.py and panopticapi disagree")
    return len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count(),
                        help="our loader workers (panopticapi always uses cpu_count() processes)")
    parser.add_argument("--threads", type=int, default=2, help="our merge threads (merge.threads)")
    parser.add_argument("--device", default="cpu", help="where our merge runs (cpu, cuda)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # parallel work comes from the workers and merge threads, as in the tool
    try:
        import panopticapi.combine_semantic_and_instance_predictions  # noqa: F401
        have_papi = True
    except ImportError:
        have_papi = False
        print("panopticapi is not installed: timing tools/merge.py only")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_inputs(root / "in", args.images, args.instances, (args.height, args.width))
        best = {"ours": float("inf"), "panopticapi": float("inf")}
        for r in range(args.rounds):
            for name in best if have_papi else ["ours"]:
                out = root / f"{name}{r}"
                start = time.perf_counter()
                if name == "ours":
                    run_ours(paths, out, args.workers, args.threads, args.device)
                else:
                    # panopticapi prints progress per batch of images: keep the output readable
                    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                        run_panopticapi(paths, out)
                best[name] = min(best[name], time.perf_counter() - start)
        n = args.images
        print(f"{n} images {args.height}x{args.width}, {args.instances} detections each, "
              f"{multiprocessing.cpu_count()} CPUs; ours on {args.device}, {args.workers} workers, "
              f"{args.threads} merge threads")
        print(f"tools/merge.py : {best['ours']:7.2f} s  {n / best['ours']:7.1f} images/s")
        if have_papi:
            same = check_same(root / f"ours{args.rounds - 1}", root / f"panopticapi{args.rounds - 1}")
            print(f"panopticapi    : {best['panopticapi']:7.2f} s  {n / best['panopticapi']:7.1f} images/s")
            print(f"speed-up {best['panopticapi'] / best['ours']:.2f}x; outputs: same partition and "
                  f"categories on all {same} images")


if __name__ == "__main__":
    main()
