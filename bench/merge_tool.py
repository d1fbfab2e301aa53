"""tools/merge.py vs COCO panopticapi's combine converter: wall clock as a user runs them, same inputs.

    python bench/merge_tool.py [--families detector geometric] [--images 100] [--instances 100] [--rounds 3]
    python bench/merge_tool.py --in-process [--workers 2] [--threads 2] [--device cuda]  # the old in-process timing

Both read the same saved predictions from disk and write COCO-panoptic PNGs + JSON. By default each is
run as its command line in a fresh process (``python tools/merge.py merge.rules=detectron2 device=cpu
...`` and ``python -m panopticapi.combine_semantic_and_instance_predictions ...``), alternated round
by round (the order flips every round), and timed three ways: wall clock of the whole process
(start-up included), CPU time of the process and its workers (less sensitive to other load on
the machine), time to the first PNG written (start-up: imports, config, reading the JSONs;
the bench polls the output folder every 2 ms), and the tool's own timer (ours: the ``total`` it
logs; panopticapi: the ``Time elapsed`` it prints). Every round checks that the two outputs are the
same partition with the same categories on every image.

* ours: Detectron2 rules (= panopticapi's combine rules), semantic predictions as label PNGs;
* panopticapi: a pool of ``cpu_count()`` processes; semantic predictions as a COCO semantic
  results JSON written from the same label maps. COCO's panopticapi is not on PyPI: install it from
  its source (``pip install --no-deps /path/to/panopticapi``, or put a checkout on PYTHONPATH);
  without it only our side is timed.

Input families (generated, fixed seeds), 480x640 images, ``--instances`` detections per image with
scores uniform in [0.05, 1], category ids of 80 things, 53 stuff categories:

* ``detector``: a detector's output: soft blobs of varied size (16-400 px sides, a third jittered
  duplicates) thresholded at 0.5; the stuff map a coarse grid of labels;
* ``geometric``: rectangles, ellipses and polygons (short RLEs, mean area ~24k px); stuff in 12
  rectangular blocks.

In both the confident instances' thing categories are painted into the semantic map.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from merge import make_inputs  # bench/merge.py: the same synthetic detector output  # noqa: E402
from panfpn.data.panoptic_io import read_id_png
from panfpn.engine.merge_run import PANOPTIC_NAME, merge_files
from panfpn.modeling.merge import MergeThresholds

REPO = Path(__file__).resolve().parents[1]
THING_IDS = list(range(1, 81))
STUFF_IDS = list(range(92, 145))


def categories() -> list[dict]:
    """80 thing + 53 stuff categories. Colours stay away from black: panopticapi's id generator
    jitters a thing's colour by up to +-30 per channel, and a colour of (0, 0, 0) is segment id 0,
    i.e. void."""
    rng = np.random.default_rng(0)
    return [{"id": i, "name": f"{'thing' if i in THING_IDS else 'stuff'}{i}", "isthing": int(i in THING_IDS),
             "color": [int(v) for v in rng.integers(40, 216, size=3)]} for i in THING_IDS + STUFF_IDS]


def detector_image(seed: int, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """(bool masks [N, H, W], scores, thing category ids, semantic category ids [H, W]) of a
    detector-like output (bench/merge.py's blobs)."""
    probs, scores, labels, sem = make_inputs(*size, n, len(STUFF_IDS) + 1, seed=seed, device="cpu")
    masks = (probs >= 0.5).numpy()
    thing_ids = [THING_IDS[int(c) % len(THING_IDS)] for c in labels]
    ids = np.array(STUFF_IDS, dtype=np.int64)[sem.clamp(max=len(STUFF_IDS) - 1).numpy()]
    thing_region = sem.numpy() == len(STUFF_IDS)
    ids[thing_region] = _thing_owner(masks, scores, thing_ids, thing_region)
    return masks, scores.numpy().astype(np.float64), thing_ids, ids


def geometric_image(seed: int, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """The same, of simple shapes: rectangles, ellipses and polygons with sides of 70-300 px (short
    RLEs; mean area ~24k px at 480x640); stuff in 3x4 rectangular blocks."""
    rng = np.random.default_rng(10_000 + seed)
    h, w = size
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        bh, bw = (int(v) for v in rng.integers(70, 301, 2))
        bh, bw = min(bh, h), min(bw, w)
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        shape = Image.new("1", (w, h))
        draw = ImageDraw.Draw(shape)
        kind = i % 3
        if kind == 0:
            draw.rectangle((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=1)
        elif kind == 1:
            draw.ellipse((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=1)
        else:
            k = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            pts = [(x0 + bw / 2 * (1 + np.cos(a)), y0 + bh / 2 * (1 + np.sin(a))) for a in angles]
            draw.polygon(pts, fill=1)
        masks[i] = np.asarray(shape, dtype=bool)
    scores = rng.uniform(0.05, 1.0, n)
    thing_ids = [THING_IDS[int(c)] for c in rng.integers(0, len(THING_IDS), n)]
    blocks = rng.choice(STUFF_IDS, size=(3, 4))
    ids = np.repeat(np.repeat(blocks, -(-h // 3), 0), -(-w // 4), 1)[:h, :w].astype(np.int64)
    thing_region = masks[scores > 0.4].any(0)
    ids[thing_region] = _thing_owner(masks, torch.from_numpy(scores), thing_ids, thing_region)
    return masks, scores, thing_ids, ids


FAMILIES = {"detector": detector_image, "geometric": geometric_image}


def write_inputs(root: Path, num_images: int, num_instances: int, size: tuple[int, int],
                 family: str = "detector") -> dict:
    """Saved predictions of one input family in both formats; returns the paths."""
    sem_dir = root / "semantic"
    sem_dir.mkdir(parents=True)
    images, results, sem_results, areas = [], [], [], []
    for k in range(num_images):
        masks, scores, thing_ids, ids = FAMILIES[family](k, num_instances, size)
        image_id = 1000 + k
        name = f"{image_id:012d}"
        images.append({"id": image_id, "file_name": name + ".jpg", "height": size[0], "width": size[1]})
        for mask, score, cat in zip(masks, scores.tolist(), thing_ids):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            areas.append(int(mask.sum()))
            results.append({"image_id": image_id, "category_id": cat, "score": round(score, 6),
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
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
    counts = [len(r["segmentation"]["counts"]) for r in results]
    paths["stats"] = {"mean_area": float(np.mean(areas)), "mean_rle_chars": float(np.mean(counts))}
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


def _panopticapi_path() -> str | None:
    """The folder to put on PYTHONPATH for panopticapi, or None when it is not importable."""
    try:
        import panopticapi
    except ImportError:
        return None
    return str(Path(panopticapi.__file__).resolve().parents[1])


def ours_command(paths: dict, out: Path, workers: int) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "merge.py"), f"merge.semantic_dir={paths['semantic_dir']}",
            f"merge.instances_json={paths['instances_json']}", f"merge.images_json={paths['images_json']}",
            "merge.rules=detectron2", f"merge.output_dir={out}", f"merge.workers={workers}", "device=cpu"]


def panopticapi_command(paths: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "panopticapi.combine_semantic_and_instance_predictions",
            "--semseg_json_file", str(paths["semseg_json"]), "--instseg_json_file", str(paths["instances_json"]),
            "--images_json_file", str(paths["images_json"]), "--categories_json_file",
            str(paths["categories_json"]), "--panoptic_json_file", str(out / "panoptic.json"),
            "--segmentations_folder", str(out / "png"), "--confidence_thr", "0.5", "--overlap_thr", "0.5",
            "--stuff_area_limit", str(64 * 64)]


def run_cli(cmd: list[str], png_dir: Path, env: dict, own_timer: str) -> dict:
    """Wall seconds of one command in a fresh process, seconds to its first PNG in ``png_dir``, and
    the seconds its own timer reports (the regex ``own_timer`` on its output)."""
    first: list[float] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)  # noqa: S603

    def watch() -> None:
        while proc.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                if any(os.scandir(png_dir)):
                    first.append(time.perf_counter() - start)
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its workers, reaped
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{output[-3000:]}")
    own = re.findall(own_timer, output)
    return {"wall": wall, "first": first[0] if first else float("nan"),
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "own": float(own[-1]) if own else float("nan")}


def bench_family(family: str, root: Path, args: argparse.Namespace, papi_path: str | None) -> dict:
    """Both command lines alternated over ``args.rounds`` rounds on one input family."""
    t0 = time.perf_counter()
    if (root / family / "images.json").exists():  # --keep of an earlier run: reuse its inputs
        paths = {k: root / family / v for k, v in (
            ("semantic_dir", "semantic"), ("images_json", "images.json"), ("instances_json", "instances.json"),
            ("semseg_json", "semseg.json"), ("categories_json", "categories.json"))}
        results = json.loads(paths["instances_json"].read_text())
        areas = [mask_utils.area({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
                 for r in results]
        paths["stats"] = {"mean_area": float(np.mean(areas)),
                          "mean_rle_chars": float(np.mean([len(r["segmentation"]["counts"]) for r in results]))}
    else:
        paths = write_inputs(root / family, args.images, args.instances, (args.height, args.width), family)
    print(f"\n[{family}] {args.images} images {args.height}x{args.width}, {args.instances} detections "
          f"each, mean mask area {paths['stats']['mean_area']:.0f} px, mean RLE {paths['stats']['mean_rle_chars']:.0f} "
          f"characters (generated in {time.perf_counter() - t0:.0f} s)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([papi_path] if papi_path else []) + [os.environ.get("PYTHONPATH", "")]))
    names = ["ours", "panopticapi"] if papi_path else ["ours"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        outs: dict[str, Path] = {}
        for name in names if r % 2 == 0 else names[::-1]:
            out = outs[name] = Path(tempfile.mkdtemp(dir=root, prefix=f"{family}_{name}{r}_"))
            out.rmdir()
            if name == "ours":
                runs[name].append(run_cli(ours_command(paths, out, args.workers), out / PANOPTIC_NAME, env,
                                          r"seconds: .*total ([0-9.]+)"))
            else:
                out.mkdir(parents=True)
                runs[name].append(run_cli(panopticapi_command(paths, out), out / "png", env,
                                          r"Time elapsed: ([0-9.]+) seconds"))
        if papi_path:
            check_same(outs["ours"], outs["panopticapi"])
    for name, rows in runs.items():
        print(f"  {name:12s} wall " + " ".join(f"{x['wall']:5.2f}" for x in rows) + " s; first PNG after "
              + " ".join(f"{x['first']:5.2f}" for x in rows) + " s; own timer "
              + " ".join(f"{x['own']:5.2f}" for x in rows) + " s; CPU "
              + " ".join(f"{x['cpu']:5.2f}" for x in rows) + " s")
    if papi_path:
        for key, what in (("wall", "wall clock, start-up included"), ("own", "each tool's own timer"),
                          ("cpu", "CPU time of all its processes"),
                          ("first", "time to the first PNG")):
            ratios = [p[key] / o[key] for o, p in zip(runs["ours"], runs["panopticapi"])]
            print(f"  panopticapi / ours, {what}: " + " ".join(f"{x:.2f}x" for x in ratios)
                  + f" (median {statistics.median(ratios):.2f}x)")
        print(f"  outputs: same partition and categories on all {args.images} images, every round")
    return runs


def startup(args: argparse.Namespace, root: Path) -> None:
    """Start-up of the tool, fresh processes, interleaved rounds: its imports, and the whole tool on
    a one-image input through each of its three config paths (config.yaml alone, one compose,
    ``@hydra.main``); torch's import and
    panopticapi on the same input for reference."""
    paths = write_inputs(root / "one", 1, args.instances, (args.height, args.width), args.families[0])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), _panopticapi_path() or "",
                                                      os.environ.get("PYTHONPATH", "")]))
    cases = {
        "import the tool's modules (hydra, merge_run)": [sys.executable, "-c",
                                                         "import hydra, omegaconf, panfpn.engine.merge_run"],
        "import torch (no longer imported on the CPU)": [sys.executable, "-c", "import torch"],
        "tools/merge.py, 1 image, config.yaml alone": None,
        "tools/merge.py, 1 image, one compose": None,
        "tools/merge.py, 1 image, @hydra.main": None,
        "panopticapi converter, 1 image": None,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, cmd in cases.items():
            out = Path(tempfile.mkdtemp(dir=root, prefix="startup_"))
            if name.endswith("config.yaml alone"):  # merge.* and device overrides only: docs/merge.md's command
                cmd = ours_command(paths, out / "o", 0)
            elif name.endswith("one compose"):  # a key config.yaml alone does not give: one full compose
                cmd = ours_command(paths, out / "o", 0) + [f"output_dir={out / 'run'}"]  # (seed=0: now refused)
            elif name.endswith("@hydra.main"):
                cmd = ours_command(paths, out / "o", 0) + [f"hydra.run.dir={out / 'run'}"]
            elif name.startswith("panopticapi"):
                if not _panopticapi_path():
                    continue
                cmd = panopticapi_command(paths, out)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=out)  # noqa: S603
            times[name].append(time.perf_counter() - start)
    print(f"start-up, fresh processes, {args.rounds} interleaved rounds, seconds min / median / max "
          f"(load average {os.getloadavg()[0]:.1f}):")
    for name, values in times.items():
        if values:
            print(f"  {name:46s} {min(values):5.2f} / {statistics.median(values):5.2f} / {max(values):5.2f}")


def in_process(args: argparse.Namespace, root: Path) -> None:
    """The earlier timing: both in this process, start-up excluded, best of ``args.rounds``."""
    torch.set_num_threads(1)
    paths = write_inputs(root / "in", args.images, args.instances, (args.height, args.width), args.families[0])
    have_papi = _panopticapi_path() is not None
    best = {"ours": float("inf"), "panopticapi": float("inf")}
    for r in range(args.rounds):
        for name in best if have_papi else ["ours"]:
            out = root / f"{name}{r}"
            start = time.perf_counter()
            if name == "ours":
                run_ours(paths, out, args.workers, args.threads, args.device)
            else:
                with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                    run_panopticapi(paths, out)
            best[name] = min(best[name], time.perf_counter() - start)
    n = args.images
    print(f"in-process, {args.families[0]}: tools/merge.py's merge_files {best['ours']:.2f} s "
          f"({n / best['ours']:.1f} images/s)")
    if have_papi:
        same = check_same(root / f"ours{args.rounds - 1}", root / f"panopticapi{args.rounds - 1}")
        print(f"panopticapi {best['panopticapi']:.2f} s ({n / best['panopticapi']:.1f} images/s); "
              f"speed-up {best['panopticapi'] / best['ours']:.2f}x; same output on {same} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count(),
                        help="merge.workers (panopticapi always uses cpu_count() processes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="time merge_files in this process instead")
    parser.add_argument("--startup", action="store_true", help="time the start-up only (one-image runs)")
    parser.add_argument("--keep", default=None, help="generate the inputs into this folder and keep them "
                        "(a later run reuses them)")
    parser.add_argument("--threads", type=int, default=2, help="--in-process: merge.threads (GPU)")
    parser.add_argument("--device", default="cpu", help="--in-process: where our merge runs (cpu, cuda)")
    args = parser.parse_args()
    papi_path = _panopticapi_path()
    print(f"{multiprocessing.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; ours: "
          f"merge.workers={args.workers}; panopticapi: " + (papi_path or "not installed, timing ours only"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.in_process:
            in_process(args, Path(tmp))
            return
        if args.startup:
            startup(args, Path(tmp))
            return
        for family in args.families:
            bench_family(family, Path(args.keep or tmp), args, papi_path)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
