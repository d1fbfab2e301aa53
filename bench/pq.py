"""Speed of panfpn's PQ evaluation against hotcoco, panopticapi and the PNG decoding floor.

Generates COCO-panoptic ground truths and perturbed predictions in two size families (``coco``:
300 pairs of 640x480, ~30 segments each; ``cityscapes``: 50 pairs of 2048x1024, ~38 segments,
objects scaled with the image), then times on the same cores, in interleaved rounds (the order
rotating every round), in this process tree:

* ours: ``panfpn.evaluation.pq_compute`` (cold, and again with a warm ground-truth cache);
* ours with no counting: the same cold evaluation with its pair counting and PQ rules replaced by
  no-ops, what the rest of it costs (JSON files, pool, reads, decoding into packed words): a lower
  bound for any counting code, to hold against the floor goal;
* hotcoco's ``PanopticEval`` (Rust, multi-threaded);
* the floor: reading and decoding the same PNGs with the fastest decoder, as pq_compute's pool
  (and with pyspng, the fastest when issue 23 set its goal, when that is not already the decoder);
  and each decoder on as many threads of one process as there are workers, the floor as issue 23
  defined it ("the fastest Python decoder on 2 threads");
* panopticapi's ``pq_compute`` (after the rounds, ``--panopticapi-repeat`` times) when available:
  importable here, or through ``--panopticapi-python /path/to/python`` of a venv that has it
  (COCO's panopticapi is not on PyPI: ``pip install --no-deps /path/to/a/checkout/of/
  cocodataset/panopticapi``, or a checkout on PYTHONPATH; it runs on numpy 2);
* with ``--accumulator-only``: the in-memory ``PQAccumulator`` per 800x1216 image.

Every figure is printed as min / median / max over the rounds, with per-round ratios. Usage::

    python bench/pq.py [--families coco cityscapes] [--repeat 5] [--stages] [--keep DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panfpn.evaluation.id_runs import known_ids, pair_counts_packed  # noqa: E402
from panfpn.data.panoptic_io import (decode_id_png_packed, decode_id_png_rgb, id_png_decoder,  # noqa: E402
                                    id_to_rgb)
import panfpn.evaluation.pq as pq_module  # noqa: E402
from panfpn.evaluation.pq import pq_compute, task_bounds, tune_worker_malloc  # noqa: E402
from panfpn.evaluation.pq_rules import PQStat, accumulate_image  # noqa: E402

THING_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21]
STUFF_IDS = [92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141]


def scene(rng: np.random.Generator, h: int, w: int, n_stuff: int = 8, n_things: int = 22):
    """GT and prediction id maps + segments: wavy stuff bands and elliptic things."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    bounds = np.sort(rng.uniform(0, h, n_stuff - 1))
    freq, phase = rng.uniform(20, 80, n_stuff - 1), rng.uniform(0, 6, n_stuff - 1)
    scale = max(1.0, w / 640)  # object sizes grow with the image (Cityscapes-like: 2048 wide)
    things = [(rng.uniform(0, h), rng.uniform(0, w), *(scale * rng.uniform(10, 80, 2)))
              for _ in range(n_things)]
    stuff_cat = rng.choice(STUFF_IDS, n_stuff, replace=False)
    thing_cat = rng.choice(THING_IDS, n_things)
    crowd = rng.random(n_things) < 0.05

    def paint(jitter: float, drop: np.ndarray):
        wave = np.stack([b + 20 * np.sin(xx[0] / f + p + jitter * rng.normal())
                         for b, f, p in zip(bounds, freq, phase)])
        band = (yy[None] > wave[:, None, :]).sum(0)
        ids = rng.choice(np.arange(1, 1 << 24), n_stuff + n_things, replace=False)
        id_map = ids[band]
        segs = [{"id": int(ids[k]), "category_id": int(stuff_cat[k]), "iscrowd": 0}
                for k in range(n_stuff)]
        for k, (cy, cx, ry, rx) in enumerate(things):
            if drop[k]:
                continue
            cy, cx = cy + jitter * rng.normal() * 4, cx + jitter * rng.normal() * 4
            id_map[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = ids[n_stuff + k]
            segs.append({"id": int(ids[n_stuff + k]), "category_id": int(thing_cat[k]),
                         "iscrowd": int(crowd[k])})
        if jitter == 0:
            id_map[: h // 30] = 0  # a void strip in the ground truth
        present = set(np.unique(id_map).tolist())
        segs = [s for s in segs if s["id"] in present]
        for s in segs:
            mask = id_map == s["id"]
            ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            s["area"] = int(mask.sum())
            s["bbox"] = [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
        return id_map, segs

    gt = paint(0.0, np.zeros(n_things, bool))
    pred = paint(1.0, rng.random(n_things) < 0.1)
    for s in pred[1]:
        s.pop("iscrowd"), s.pop("bbox")
    return gt, pred


def _write_one(args):
    folder, seed, h, w, n_things = args
    (gt_map, gt_segs), (pred_map, pred_segs) = scene(np.random.default_rng(seed), h, w,
                                                     n_things=n_things)
    name = f"{seed:012d}.png"
    Image.fromarray(id_to_rgb(gt_map)).save(Path(folder) / "gt" / name)
    Image.fromarray(id_to_rgb(pred_map)).save(Path(folder) / "pred" / name)
    return seed, name, gt_segs, pred_segs


def write_dataset(folder: Path, n: int, h: int, w: int, workers: int,
                  n_things: int = 22) -> tuple[Path, Path]:
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        rows = pool.map(_write_one, [(str(folder), i, h, w, n_things) for i in range(n)])
    cats = ([{"id": c, "name": str(c), "isthing": 1} for c in THING_IDS]
            + [{"id": c, "name": str(c), "isthing": 0} for c in STUFF_IDS])
    images = [{"id": i, "file_name": name.replace(".png", ".jpg"), "height": h, "width": w}
              for i, name, _, _ in rows]
    for side, idx in (("gt", 2), ("pred", 3)):
        anns = [{"image_id": r[0], "file_name": r[1], "segments_info": r[idx]} for r in rows]
        (folder / f"{side}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return folder / "gt.json", folder / "pred.json"


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its reaped children (pool workers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def _decode_files(paths, decoder: str = "fastest"):
    if decoder == "pyspng":
        import pyspng

    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        if decoder == "pyspng":
            pyspng.load(data, "RGB")
        else:
            decode_id_png_rgb(data, p)
    return len(paths)


def decode_floor(paths: list[str], workers: int, decoder: str = "fastest") -> int:
    """Read and decode ``paths`` on ``workers`` processes with the decoder pq_compute uses
    (``"fastest"``) or with libspng (``"pyspng"``: the floor as issue 23 first measured it).

    Into 3-byte RGB, the decoders' fastest output, although pq_compute asks Wuffs for 4-byte
    packed words (~5 % slower to decode, repaid by the count): the floor stays the cheapest decode.
    """
    # Same worker set-up and tasks as pq_compute's (interleaved slices, shrinking runs of them),
    # for a like-for-like floor.
    n_slices = min(len(paths), 128)
    bounds = task_bounds(n_slices, workers)
    chunks = [([p for i in range(first, stop) for p in paths[i::n_slices]], decoder)
              for first, stop in zip(bounds, bounds[1:])]
    with multiprocessing.get_context("fork").Pool(workers, initializer=tune_worker_malloc) as pool:
        return sum(pool.starmap(_decode_files, chunks, chunksize=1))


def pq_compute_without_counting(gt_json: Path, pred_json: Path, workers: int) -> dict:
    """pq_compute's cold evaluation with its pair counting and PQ rules made no-ops (the forked
    workers inherit the patch): the time of everything else, so the least any counting code could
    give. Its result is all zeros; only its time is of use."""
    with mock.patch.object(pq_module, "pair_counts_packed", lambda *args: []), \
            mock.patch.object(pq_module, "accumulate_image", lambda *args: None):
        return pq_compute(gt_json, pred_json, workers=workers)


def _decode_on_threads(paths: list[str], threads: int, decoder: str) -> int:
    n_chunks = min(len(paths), threads * 4)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda i: _decode_files(paths[i::n_chunks], decoder), range(n_chunks)))


def decode_floor_threads(paths: list[str], workers: int, decoder: str = "fastest") -> int:
    """The floor as issue 23 defined it: the PNGs read and decoded on ``workers`` threads of one
    process (a forked one with pq_compute's worker heap settings: with glibc's defaults the
    decoders' fresh buffers page-fault, 2x the CPU). pywuffs lets go of the GIL while it decodes
    (two threads take the time of two processes on a quiet machine); libspng does not."""
    with multiprocessing.get_context("fork").Pool(1, initializer=tune_worker_malloc) as pool:
        return pool.apply(_decode_on_threads, (paths, workers, decoder))


def stage_breakdown(folder: Path, gt_json: Path, pred_json: Path, n: int = 100) -> dict:
    """Per-image CPU milliseconds of each stage of pq_compute's cold path, on one core.

    CPU time rather than wall time: it does not depend on what else runs on the machine.
    """
    tune_worker_malloc()  # as in pq_compute's workers
    gt = json.loads(gt_json.read_text())["annotations"][:n]
    pred = json.loads(pred_json.read_text())["annotations"][:n]
    cats = {c["id"]: c for c in json.loads(gt_json.read_text())["categories"]}
    t = dict.fromkeys(("read", "decode", "pair counts", "rules"), 0.0)
    stat = PQStat()
    for k, (g, p) in enumerate([*zip(gt[:3], pred[:3]), *zip(gt, pred)]):
        t0 = time.process_time()
        datas = [(folder / "gt" / g["file_name"]).read_bytes(),
                 (folder / "pred" / p["file_name"]).read_bytes()]
        t1 = time.process_time()
        words = [decode_id_png_packed(d) for d in datas]
        t2 = time.process_time()
        pairs = pair_counts_packed(*words, known_ids(g["segments_info"]),
                                known_ids(p["segments_info"]))
        t3 = time.process_time()
        accumulate_image(stat, g["image_id"], g["segments_info"], p["segments_info"], pairs, cats)
        t4 = time.process_time()
        if k >= 3:  # the first three warm up imports and allocations
            for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[key] += dt
    return {k: 1000 * v / len(gt) for k, v in t.items()}


def run_panopticapi(python: str | None, gt_json: Path, pred_json: Path, repeat: int):
    """Seconds of panopticapi's pq_compute (best of repeat) and its All PQ, or None."""
    code = (
        "import contextlib, io, json, sys, time\n"
        "from panopticapi.evaluation import pq_compute\n"
        "best = 1e9\n"
        f"for _ in range({repeat}):\n"
        "    t0 = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        f"        r = pq_compute({str(gt_json)!r}, {str(pred_json)!r})\n"
        "    best = min(best, time.perf_counter() - t0)\n"
        "print(json.dumps([best, r['All']['pq']]))\n"
    )
    exe = python or sys.executable
    proc = subprocess.run([exe, "-c", code], capture_output=True, text=True)  # noqa: S603
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def bench_accumulator(repeat: int) -> dict:
    import torch

    from panfpn.evaluation import PQAccumulator

    (gt_map, gt_segs), (pred_map, pred_segs) = scene(np.random.default_rng(0), 800, 1216)
    cats = ([{"id": c, "isthing": 1} for c in THING_IDS]
            + [{"id": c, "isthing": 0} for c in STUFF_IDS])
    # Dense 1..K prediction ids, as the model produces.
    remap = {s["id"]: k + 1 for k, s in enumerate(pred_segs)}
    pred_dense = np.zeros(pred_map.shape, np.int32)
    for old, new in remap.items():
        pred_dense[pred_map == old] = new
    pred_segs = [dict(s, id=remap[s["id"]]) for s in pred_segs]
    out = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        g = torch.from_numpy(gt_map.astype(np.int32)).to(dev)
        p = torch.from_numpy(pred_dense).to(dev)
        acc = PQAccumulator(cats)
        acc.update(p, pred_segs, g, gt_segs)  # warm-up
        reps = 20

        def run():
            for _ in range(reps):
                acc.update(p, pred_segs, g, gt_segs)
            if dev == "cuda":
                torch.cuda.synchronize()

        sec, _ = best_of(run, repeat)
        out[dev] = 1000 * sec / reps
    return out


FAMILIES = {  # name: (images, height, width, things per image)
    "coco": (300, 480, 640, 22),
    "cityscapes": (50, 1024, 2048, 30),
}


def spread(values: list[float]) -> str:
    return (f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"
            if len(values) > 1 else f"{values[0]:.3f}")


def bench_family(family: str, folder: Path, args: argparse.Namespace) -> None:
    """All contenders on one generated dataset, interleaved round by round; spread and ratios."""
    n, h, w, n_things = FAMILIES[family]
    n = args.images or n
    workers = args.workers
    t0 = time.perf_counter()
    if (folder / "pred.json").exists():  # --keep of an earlier run: reuse it
        gt_json, pred_json = folder / "gt.json", folder / "pred.json"
    else:
        gt_json, pred_json = write_dataset(folder, n, h, w, workers, n_things)
    n = len(json.loads(gt_json.read_text())["annotations"])
    n_segs = np.mean([len(a["segments_info"]) for a in json.loads(gt_json.read_text())["annotations"]])
    print(f"\n[{family}] {n} image pairs {h}x{w}, {n_segs:.1f} ground-truth segments per image "
          f"(generated or found in {time.perf_counter() - t0:.0f} s); {workers} workers on "
          f"{os.cpu_count()} cores; decoder: {id_png_decoder()}; load average {os.getloadavg()[0]:.1f}")
    cache = folder / "gt_cache"
    paths = [str(p) for p in sorted((folder / "gt").glob("*.png")) + sorted((folder / "pred").glob("*.png"))]
    pq_compute(gt_json, pred_json, workers=workers, cache_dir=cache)  # fill the cache

    def hotcoco_run():
        from hotcoco.panoptic import PanopticEval

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            ev = PanopticEval(str(gt_json), str(pred_json))
            ev.evaluate()
            return ev.results()

    contenders = {
        "ours, cold": lambda: pq_compute(gt_json, pred_json, workers=workers),
        "ours, warm GT cache": lambda: pq_compute(gt_json, pred_json, workers=workers, cache_dir=cache),
        "ours, no counting": lambda: pq_compute_without_counting(gt_json, pred_json, workers),
        "decode floor": lambda: decode_floor(paths, workers),
    }
    if id_png_decoder() != "pyspng" and importlib.util.find_spec("pyspng"):
        contenders["decode floor, pyspng"] = lambda: decode_floor(paths, workers, "pyspng")
    contenders["decode floor, threads"] = lambda: decode_floor_threads(paths, workers)
    try:
        import hotcoco.panoptic  # noqa: F401

        contenders["hotcoco"] = hotcoco_run
    except ImportError:
        print("hotcoco: skipped (not installed)")
    # Interleaved rounds, the order rotating: every contender sees the same load. CPU seconds (all
    # threads and worker processes) beside wall time depend less on what else runs.
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    outs: dict = {}
    names = list(contenders)
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu_s, outs[name] = timed(contenders[name])
            walls[name].append(wall)
            cpus[name].append(cpu_s)
    ours = outs["ours, cold"]
    assert outs["ours, warm GT cache"] == ours
    assert outs["ours, no counting"]["All"]["n"] == 0  # the patch took effect in the workers
    if "hotcoco" in outs:
        assert abs(outs["hotcoco"]["All"]["pq"] - ours["All"]["pq"]) < 1e-12
    print(f"PQ = {100 * ours['All']['pq']:.2f} (All), the same from every contender; {args.repeat} "
          "rounds, seconds min / median / max:")
    for name in contenders:
        print(f"  {name:20s} wall {spread(walls[name])}  CPU {spread(cpus[name])}")
    print("per-round ratios, min / median / max (wall; CPU in brackets):")

    def ratios(a: str, b: str) -> str:
        wr = [x / y for x, y in zip(walls[a], walls[b])]
        cr = [x / y for x, y in zip(cpus[a], cpus[b])]
        return f"{spread(wr)} ({spread(cr)})"

    print(f"  ours cold / decode floor:   {ratios('ours, cold', 'decode floor')}   (goal <= 1.25)")
    print(f"  ours warm / decode floor:   {ratios('ours, warm GT cache', 'decode floor')}")
    print(f"  no counting / decode floor: {ratios('ours, no counting', 'decode floor')}   (the least "
          "cold / floor any counting could reach: counting and rules in no time)")
    if "decode floor, pyspng" in walls:
        print(f"  ours cold / pyspng floor:   {ratios('ours, cold', 'decode floor, pyspng')}   "
              "(the floor's decoder when issue 23 was filed)")
    print(f"  ours cold / threads floor:  {ratios('ours, cold', 'decode floor, threads')}   (the floor "
          f"as issue 23 defined it: the fastest decoder on {workers} threads)")
    if "hotcoco" in walls:
        print(f"  hotcoco / ours cold:        {ratios('hotcoco', 'ours, cold')}   (goal >= 1.00)")
    if args.panopticapi_repeat:
        papi, why = run_panopticapi(args.panopticapi_python, gt_json, pred_json, args.panopticapi_repeat)
        if papi is None:
            print(f"panopticapi: skipped ({why}); pass --panopticapi-python of a venv that has it")
        else:
            assert abs(papi[1] - ours["All"]["pq"]) < 1e-12
            print(f"  panopticapi (best of {args.panopticapi_repeat}, after the rounds): {papi[0]:.3f} s wall, "
                  f"{papi[0] / statistics.median(walls['ours, cold']):.2f}x ours cold (median)")
    if args.stages:
        stages = stage_breakdown(folder, gt_json, pred_json, n=min(n, 100))
        total = sum(stages.values())
        print("where the time goes, one core, CPU ms per image (GT + prediction PNG):")
        for k, v in stages.items():
            print(f"  {k:12s} {v:6.3f} ms  {100 * v / total:5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--images", type=int, default=None, help="default: 300 COCO-like, 50 Cityscapes-like")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--panopticapi-python", default=None,
                    help="python of a venv with panopticapi (default: this interpreter)")
    ap.add_argument("--panopticapi-repeat", type=int, default=1, help="0: skip panopticapi")
    ap.add_argument("--stages", action="store_true", help="also the per-stage CPU breakdown")
    ap.add_argument("--keep", default=None, help="generate into this folder (one subfolder per family) and keep it")
    ap.add_argument("--accumulator-only", action="store_true",
                    help="only time PQAccumulator.update (CPU, and CUDA when available)")
    args = ap.parse_args()
    if args.accumulator_only:
        for dev, ms in bench_accumulator(args.repeat).items():
            print(f"PQAccumulator.update, 800x1216 image, {dev}: {ms:.2f} ms/image")
        return
    with tempfile.TemporaryDirectory(prefix="pq_bench_") as tmp:
        root = Path(args.keep or tmp)
        for family in args.families:
            bench_family(family, root / family, args)


if __name__ == "__main__":
    main()
