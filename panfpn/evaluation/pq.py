"""Panoptic quality of COCO-panoptic folders: a drop-in for panopticapi's ``pq_compute``.

Same arguments, same result dict, same rules (see :mod:`panfpn.evaluation.pq_rules`), same
errors on bad input; faster: each image becomes a few thousand runs right after decoding (see
:mod:`panfpn.evaluation.id_runs`), images are spread over a process pool, and the ground truth's
runs can be cached on disk for repeated evaluations.

Command line::

    python -m panfpn.evaluation.pq --gt-json panoptic_val2017.json --pred-json pred.json \
        [--gt-folder DIR] [--pred-folder DIR] [--out results.json] [--workers N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import platform
import sys
import time
from typing import Any, Sequence

from panfpn.data.panoptic_io import read_id_png_packed
from panfpn.evaluation.id_runs import known_ids, pair_counts, pair_counts_packed, runs_of_packed
from panfpn.evaluation.panoptic_png import RunsCache
from panfpn.evaluation.pq_rules import (PQInputError, PQStat, accumulate_image, format_table,
                                        normalize_categories, pq_results)
from panfpn.utils.atomic import atomic_write
from panfpn.utils.closed_stdout import stdout_reader_may_leave
from panfpn.utils.stop_signals import ignore_foreign_stop_signals, terminate_pool
from panfpn.utils.json_file import JSONFileError, JSONFileNotFoundError, load_json


def tune_worker_malloc() -> None:
    """Keep freed memory in the heap of an evaluation worker (glibc only; no-op elsewhere).

    Each image allocates and frees a few ~1 MB arrays. With glibc's defaults these come from
    fresh mmaps or from a heap that is trimmed after every free, so every image pays for page
    faults on zeroed pages again: measured 5.1 ms instead of 3.5 ms of CPU per 640x480 image
    pair. Only used in our own worker processes, never in the caller's.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: arrays below 64 MB come from the heap
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: return heap memory only above 256 MB free


def _read_pngs(image_id: Any, gt_path: str, pred_path: str, cache: RunsCache | None) -> tuple:
    """``(ground truth: its runs when cached, else its id words; its (H, W); predicted id words)``
    of one image. A PNG that is not an 8-bit RGB PNG is a PQInputError naming the image and file."""
    try:
        if cache:
            gt, gt_size = cache.read_runs(gt_path)
        else:
            gt = read_id_png_packed(gt_path)
            gt_size = gt.shape
        return gt, gt_size, read_id_png_packed(pred_path)
    except FileNotFoundError:
        raise
    except ValueError as err:  # ImageReadError, or a greyscale / 16-bit PNG: names the file
        raise PQInputError(f"image {image_id!r}: {err}") from None


def _check_crowd_flags(image_id: Any, gt_segments: Sequence[Any]) -> None:
    """Every ground-truth segment of a JSON file says whether it is a crowd region: panopticapi
    fails on one without ``iscrowd``, so a default would give a number it never gives (the
    in-memory rules do take 0 for datasets without the key)."""
    for seg in gt_segments:
        if isinstance(seg, dict) and "iscrowd" not in seg:
            raise PQInputError(f"image {image_id!r}: ground-truth segment {seg.get('id')!r} has no "
                               f"'iscrowd' key: {seg!r:.200}")


def _evaluate_chunk(chunk: Sequence[tuple[dict, dict]], gt_folder: str, pred_folder: str,
                    categories: dict, cache_dir: str | None) -> PQStat:
    cache = RunsCache(cache_dir) if cache_dir else None
    stat = PQStat()
    for gt_ann, pred_ann in chunk:
        image_id = gt_ann["image_id"]
        gt_path = os.path.join(gt_folder, gt_ann["file_name"])
        pred_path = os.path.join(pred_folder, pred_ann["file_name"])
        _check_crowd_flags(image_id, gt_ann["segments_info"])
        known = (known_ids(gt_ann["segments_info"]), known_ids(pred_ann["segments_info"]))
        gt, gt_size, pred_words = _read_pngs(image_id, gt_path, pred_path, cache)
        pred_size = pred_words.shape
        if gt_size != pred_size:
            raise PQInputError(
                f"image {image_id!r}: ground truth {gt_path} is {gt_size[0]}x{gt_size[1]} but the "
                f"prediction {pred_path} is {pred_size[0]}x{pred_size[1]} (HxW)"
            )
        if cache:
            pairs = pair_counts(gt, runs_of_packed(pred_words), *known)
        else:
            pairs = pair_counts_packed(gt, pred_words, *known)
        accumulate_image(stat, image_id, gt_ann["segments_info"], pred_ann["segments_info"],
                         pairs, categories)
    return stat


_JOB: tuple | None = None  # a pool worker's (pairs, gt_folder, pred_folder, categories, cache_dir)


def _init_worker(job: tuple) -> None:
    global _JOB
    tune_worker_malloc()
    ignore_foreign_stop_signals()  # a group SIGTERM / Ctrl-C: the parent stops the pool
    _JOB = job


def _evaluate_slices(first: int, stop: int, n_slices: int) -> list[PQStat]:
    """The statistics of each of the slices ``first .. stop - 1`` of the worker's job."""
    pairs, *rest = _JOB
    return [_evaluate_chunk(pairs[i::n_slices], *rest) for i in range(first, stop)]


_MAX_SLICES = 128  # the pairs are scored in this many interleaved slices (fewer with fewer images)


def _evaluate(job: tuple, workers: int) -> PQStat:
    """PQ statistics of all pairs of ``job``, in this process or over a pool of ``workers``.

    Slice i holds every ``n_slices``-th pair from pair i; each slice is summed alone and the
    slices are merged in order. ``n_slices`` depends only on the number of pairs, so the
    floating-point sums are done in one order whatever the worker count: the result is the same
    to the last bit with 1, 2 or 16 workers (with ``workers * 4`` slices it varied in the last
    digit).
    """
    n_slices = min(len(job[0]), _MAX_SLICES)
    if workers == 1 and len(job[0]) < 64:
        pairs, *rest = job
        stats = [_evaluate_chunk(pairs[i::n_slices], *rest) for i in range(n_slices)]
    else:
        stats = _evaluate_in_pool(job, workers, n_slices)
    stat = PQStat()
    for s in stats:
        stat.merge(s)
    return stat


def task_bounds(n_slices: int, workers: int) -> list[int]:
    """Where the pool's tasks start and end over ``n_slices`` slices: each task takes a quarter of
    the slices left per worker, so tasks shrink to one slice at the end and the workers finish
    within about one slice of each other.

    With ``workers * 4`` equal tasks one worker was still on its last task for ~45 ms of a
    ~375 ms Cityscapes-size evaluation while the other sat idle; a task per slice from the start
    costs more in messages (up to 40 ms more CPU for 300 COCO-size images).
    """
    bounds = [0]
    while bounds[-1] < n_slices:
        bounds.append(bounds[-1] + max(1, (n_slices - bounds[-1]) // (4 * workers)))
    return bounds


def _evaluate_in_pool(job: tuple, workers: int, n_slices: int) -> list[PQStat]:
    """The PQ statistics of each of ``n_slices`` slices of ``job``'s pairs (see :func:`_evaluate`)
    over a pool of ``workers`` processes.

    The job goes to each worker once, as its initializer's argument (forked workers inherit it, no
    pickling: the annotations took 7 ms to pickle for 300 COCO images, before the first worker
    could start); tasks are three integers each: a run of consecutive slices (see
    :func:`task_bounds`).
    """
    bounds = task_bounds(n_slices, workers)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        try:
            runs = pool.starmap(_evaluate_slices, [(first, stop, n_slices)
                                                   for first, stop in zip(bounds, bounds[1:])],
                                chunksize=1)
        except BaseException:  # an error or a stop signal (panfpn.utils.stop_signals)
            terminate_pool(pool)
            raise
    return [stat for run in runs for stat in run]


def _load_json(path: str, what: str) -> dict:
    """Read a COCO-panoptic JSON; every problem is an error naming the file (no traceback)."""
    try:
        data = load_json(path, what=f"{what} JSON", expect=dict)
    except JSONFileNotFoundError:
        raise  # a FileNotFoundError: "<what> JSON not found: <path>"
    except JSONFileError as err:
        raise PQInputError(str(err)) from None
    for key in ("annotations",) + (("categories",) if what == "ground-truth" else ()):
        if not isinstance(data.get(key), list):
            raise PQInputError(f"{what} JSON {path} has no {key!r} list")
    for i, cat in enumerate(data.get("categories", []) if what == "ground-truth" else []):
        if not isinstance(cat, dict) or "id" not in cat:
            raise PQInputError(f"{what} JSON {path}: categories[{i}] has no 'id': {cat!r:.200}")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not all(k in ann for k in _ANNOTATION_KEYS):
            raise PQInputError(f"{what} JSON {path}: annotations[{i}] needs the keys "
                               f"{list(_ANNOTATION_KEYS)}, got {ann!r:.200}")
        if (not isinstance(ann["segments_info"], list) or not isinstance(ann["file_name"], str)
                or isinstance(ann["image_id"], (list, dict))):
            raise PQInputError(f"{what} JSON {path}: annotations[{i}] needs a segments_info list, "
                               f"a file_name string and a number or string image_id, got {ann!r:.200}")
    return data


_ANNOTATION_KEYS = ("image_id", "file_name", "segments_info")


def match_annotations(gt_json: dict, pred_json: dict) -> list[tuple[dict, dict]]:
    """Pair each ground-truth annotation with the prediction of the same ``image_id``."""
    preds: dict[Any, dict] = {}
    for ann in pred_json["annotations"]:
        if ann["image_id"] in preds:
            raise PQInputError(f"image {ann['image_id']!r}: two predicted annotations")
        preds[ann["image_id"]] = ann
    pairs = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in preds:
            raise PQInputError(f"image {image_id!r}: no prediction for this image{_id_type_hint(image_id, preds)}")
        pairs.append((gt_ann, preds[image_id]))
    return pairs


def _id_type_hint(image_id: Any, preds: dict[Any, dict]) -> str:
    """A note when the predictions hold the same id as another JSON type (101 vs "101"): ids are
    matched as they are, as panopticapi does, and an exporter may have written them as text."""
    same = [p for p in preds if str(p) == str(image_id)]
    if not same:
        return ""
    def kind(value: Any) -> str:
        return "a string" if isinstance(value, str) else "a number"

    return (f" (the predictions have image id {same[0]!r}, {kind(same[0])}, the ground truth {image_id!r}, "
            f"{kind(image_id)}: ids must be written alike in both JSONs)")


def pq_compute(gt_json_file: str | os.PathLike, pred_json_file: str | os.PathLike,
               gt_folder: str | os.PathLike | None = None,
               pred_folder: str | os.PathLike | None = None, *, workers: int | None = None,
               cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> dict:
    """Panoptic quality of a COCO-panoptic prediction against its ground truth.

    Args:
        gt_json_file, pred_json_file: COCO-panoptic JSON files (``annotations`` with
            ``image_id``, ``file_name``, ``segments_info``; the ground truth also ``categories``).
        gt_folder, pred_folder: PNG folders; default = the JSON path without ``.json``.
        workers: worker processes (default ``os.cpu_count()``). One worker and fewer than 64
            images run in this process instead.
        cache_dir: keep decoded ground-truth runs here, keyed by the PNG's path, mtime,
            size, inode and ctime.
        verbose: print the table and the wall time.

    Returns:
        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
        {"pq", "sq", "rq", "tp", "fp", "fn", "iou"}}}``, scores as fractions.

    Raises:
        PQInputError (a ValueError) naming the image or the JSON file: no prediction for an
        image, a PNG id without a segment, a segment absent from its PNG, an unknown predicted
        category, different sizes, a repeated segment id, an id or category id that is not an
        integer, a ground-truth segment without ``iscrowd``, an ``isthing`` other than 0 / 1.
    """
    start = time.perf_counter()
    gt_json_file, pred_json_file = os.fspath(gt_json_file), os.fspath(pred_json_file)
    gt_folder = (os.fspath(gt_folder) if gt_folder is not None
                 else gt_json_file.rsplit(".json", 1)[0])
    pred_folder = (os.fspath(pred_folder) if pred_folder is not None
                   else pred_json_file.rsplit(".json", 1)[0])
    # The JSON files first: a missing prediction JSON is reported as such, not as its PNG folder.
    gt_json = _load_json(gt_json_file, "ground-truth")
    pred_json = _load_json(pred_json_file, "prediction")
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} PNG folder not found: {folder}")
    try:
        categories = normalize_categories(gt_json["categories"])
    except PQInputError as err:
        raise PQInputError(f"ground-truth JSON {gt_json_file}: {err}") from None
    pairs = match_annotations(gt_json, pred_json)
    cache = os.fspath(cache_dir) if cache_dir is not None else None

    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    stat = _evaluate((pairs, gt_folder, pred_folder, categories, cache), workers)
    results = pq_results(stat, categories)
    if verbose:
        print(format_table(results))
        print(f"PQ evaluation of {len(pairs)} images took {time.perf_counter() - start:.2f} s")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m panfpn.evaluation.pq``: score PNG folders, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description="Panoptic quality of COCO-panoptic predictions")
    parser.add_argument("--gt-json", required=True)
    parser.add_argument("--pred-json", required=True)
    parser.add_argument("--gt-folder", default=None)
    parser.add_argument("--pred-folder", default=None)
    parser.add_argument("--out", default=None, help="write the result dict here as JSON")
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--cache-dir", default=None,
                        help="cache decoded ground truth here (for evaluating many checkpoints)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        results = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                             workers=args.workers, cache_dir=args.cache_dir)
    except (PQInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.out:  # before printing: a reader that closes early (`| head`) must not cost the file
        atomic_write(args.out, lambda f: json.dump(results, f, indent=1, allow_nan=False), mode="w")
    with stdout_reader_may_leave():  # `| head`: the results are written, nothing else to say
        print(format_table(results))
        print(f"PQ evaluation took {time.perf_counter() - start:.2f} s")
    return results


if __name__ == "__main__":
    main()
