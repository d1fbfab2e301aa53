"""tools/merge.py: saved semantic predictions (label PNGs in dataset ids, or a COCO semantic
results JSON) + instance predictions (a COCO results JSON with RLE masks) -> COCO-panoptic PNGs +
JSON, merged by :func:`panfpn.modeling.merge_predictions.merge_predictions`; optionally scored with
our PQ.

The rules are a preset (``merge.rules``) with single fields overridden (``merge.score_thresh`` ...);
the rules used are logged and written to ``merge_rules.json``. Inputs are read and decoded in
``merge.workers`` processes (:mod:`panfpn.data.merge_inputs`); on the CPU they also merge (in numpy)
and write whole images and torch is never imported (:mod:`panfpn.engine.merge_tool.cpu`), on a GPU they
are DataLoader workers and ``merge.threads`` threads of the main process merge on the device and
write; the JSON lists the images in their order. An image whose inputs are missing
or bad is reported and skipped, never merged; the list goes to ``merge_skipped.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig
from tqdm import tqdm

from panfpn.data.metadata import DatasetMetadata
from panfpn.engine.config import ConfigError, section_values
from panfpn.data.merge_inputs import BadInput, MergeInputs, as_is
from panfpn.engine.merge_tool.cpu import cuda_may_be_present, merge_images_cpu
from panfpn.engine.merge_tool.output import earlier_merge_outputs, remove_outputs
from panfpn.engine.progress import bar_enabled
from panfpn.evaluation.writer import PanopticPredictionWriter, prediction_file_stem
from panfpn.modeling.merge_thresholds import MergeThresholds
from panfpn.utils.atomic import remove_stale_temp_files, write_json_atomic
from panfpn.utils.errors import refuse_several_processes
from panfpn.utils.json_file import JSONFileError, load_json
from panfpn.engine.stop_messages import merge_stopped
from panfpn.utils.stop_signals import describe_outputs

log = logging.getLogger(__name__)

PANOPTIC_NAME = "panoptic_merged"
SKIPPED_FILE = "merge_skipped.json"
RULES_FILE = "merge_rules.json"
PRESETS = {"detectron2": MergeThresholds.detectron2, "textbook": MergeThresholds.textbook}
# merge.<field> keys that override one field of the preset; "preset" keeps the preset's value
RULE_KEYS = tuple(f.name for f in dataclasses.fields(MergeThresholds))
# the merge maps category ids to labels through a table indexed by id (1 MB up to this id)
MAX_CATEGORY_ID = (1 << 20) - 1

__all__ = ["BadInput", "merge_files", "merge_from_config", "merge_rules"]


def merge_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Run the merge job of a composed config (section ``merge``, key ``device``)."""
    refuse_several_processes("merge")
    opts = section_values(cfg, "merge")
    if (opts["semantic_dir"] is None) == (opts["semantic_json"] is None):
        raise ConfigError("tools/merge.py needs exactly one of config keys 'merge.semantic_dir' (label "
                          "PNGs) and 'merge.semantic_json' (a COCO semantic results JSON), got "
                          f"semantic_dir={opts['semantic_dir']!r}, semantic_json={opts['semantic_json']!r}")
    if opts["instances_json"] is None:
        raise ConfigError("config key 'merge.instances_json' is required by tools/merge.py")
    images_json = opts["images_json"] or opts["eval_gt_json"]
    if images_json is None:
        raise ConfigError("config key 'merge.images_json' (or merge.eval_gt_json) must name a "
                          "COCO-panoptic JSON with the images and categories")
    if opts["eval_gt_json"] is not None and not Path(opts["eval_gt_json"]).is_file():  # told before merging
        raise ConfigError(f"config key 'merge.eval_gt_json': {opts['eval_gt_json']} is not a file")
    out_dir = Path(opts["output_dir"] or cfg.output_dir)
    rules, origin = merge_rules(opts)
    earlier = earlier_merge_outputs(out_dir, bool(opts.get("overwrite", False)))  # refused unless ours + overwrite
    summary = merge_files(
        None if opts["semantic_dir"] is None else Path(opts["semantic_dir"]),
        Path(opts["instances_json"]), Path(images_json), out_dir, rules=rules,
        device=_device(cfg.device), workers=opts["workers"], threads=opts["threads"],
        rules_origin=origin, remove_first=earlier, progress=opts.get("progress_bar", "auto"),
        semantic_json=None if opts["semantic_json"] is None else Path(opts["semantic_json"]))
    if opts["eval_gt_json"] is not None and summary["merged"]:
        summary["pq"] = _score(Path(opts["eval_gt_json"]), summary)
        log.info("PQ %.2f SQ %.2f RQ %.2f", *(100 * summary["pq"]["All"][k] for k in ("pq", "sq", "rq")))
    return summary


def _score(gt_json: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """PQ of the merged output against ``merge.eval_gt_json``; a ground truth it cannot be scored
    against (e.g. one listing an image the merge skipped) is a ConfigError naming the key and saying
    that the merge's files are written, not a traceback."""
    from panfpn.evaluation.pq import pq_compute
    from panfpn.evaluation.pq_rules import PQInputError

    try:
        return pq_compute(gt_json, summary["json"], workers=1)
    except (PQInputError, JSONFileError, FileNotFoundError) as err:  # the last: its PNG folder
        skipped = summary["skipped"]
        hint = (f"; the merge skipped {len(skipped)} image(s) (the reasons in "
                f"{Path(summary['json']).parent / SKIPPED_FILE}): the ground truth must not list them"
                if skipped else "")
        raise ConfigError(f"config key 'merge.eval_gt_json': {gt_json}: {err}{hint}; no PQ computed (the merged "
                          f"output is written: {summary['json']})") from None


def _device(name: Any) -> Any:
    """``"cpu"``, without importing torch, when config key ``device`` means the CPU (``auto`` on a
    machine without an NVIDIA driver); else the torch device (:func:`panfpn.utils.dist.resolve_device`)."""
    if name == "cpu" or (name == "auto" and not cuda_may_be_present()):
        return "cpu"
    from panfpn.utils.dist import resolve_device

    return resolve_device(name)


def merge_rules(opts: Mapping[str, Any]) -> tuple[MergeThresholds, dict[str, Any]]:
    """The preset ``opts["rules"]`` with each ``opts[<field>]`` that is not ``"preset"`` put in
    (``"none"`` or None for ``overlap_thresh``: no overlap rule); also ``{"preset", "overrides"}``."""
    if opts["rules"] not in PRESETS:
        raise ConfigError(f"config key 'merge.rules' must be one of {sorted(PRESETS)}, got {opts['rules']!r}")
    overrides = {}
    for key in RULE_KEYS:
        value = opts.get(key, "preset")
        if value != "preset":
            overrides[key] = None if value == "none" else value
    try:
        rules = dataclasses.replace(PRESETS[opts["rules"]](), **overrides)
    except ValueError as err:
        raise ConfigError(f"config keys merge.{{{','.join(overrides)}}} {overrides}: {err}") from err
    return rules, {"preset": opts["rules"], "overrides": overrides}


def _load_json(path: Path, what: str) -> Any:
    try:
        return load_json(path, what=what)
    except JSONFileError as err:
        raise ConfigError(str(err)) from err


def merge_files(semantic_dir: Path | None, instances_json: Path, images_json: Path, out_dir: Path, *,
                rules: MergeThresholds, device: Any, workers: int = 0,
                threads: int = 2, semantic_json: Path | None = None,
                rules_origin: Mapping[str, Any] | None = None, remove_first: Sequence[Path] = (),
                progress: bool | str = "auto") -> dict[str, Any]:
    """Merge every image of ``images_json``; semantic input: ``semantic_dir`` (label PNGs) or
    ``semantic_json`` (COCO semantic results), exactly one. ``workers``: DataLoader processes that
    read and decode, and on the CPU also merge and write (0: all in this process); ``threads``: on a
    GPU, threads that merge and write one image each (0: inline); on the CPU (``device`` "cpu" or a
    CPU torch device) the merge runs in numpy, without torch (:mod:`panfpn.engine.merge_tool.cpu`).
    ``remove_first``: an earlier run's outputs, deleted once the inputs are checked, before the first write.
    ``progress``: a progress bar (``auto``: only on a terminal); the summary line is logged either way.
    Returns ``{"json", "merged", "skipped", "rules", "seconds"}`` (seconds per stage: read, wait,
    merge, write, total)."""
    start = time.perf_counter()
    if (semantic_dir is None) == (semantic_json is None):
        raise ConfigError("merge_files: give exactly one of semantic_dir and semantic_json")
    images_data = _load_json(images_json, "merge.images_json")
    if not isinstance(images_data, dict) or "images" not in images_data or "categories" not in images_data:
        raise ConfigError(f"merge.images_json {images_json}: needs 'images' and 'categories' "
                          "(a COCO-panoptic JSON)")
    try:
        metadata = DatasetMetadata.from_coco_categories(images_data["categories"], name=str(images_json))
    except ValueError as err:
        raise ConfigError(f"merge.images_json {images_json}: {err}") from err
    huge = next((c for c in metadata.categories if c.id > MAX_CATEGORY_ID), None)
    if huge is not None:
        raise ConfigError(f"merge.images_json {images_json}: category {huge.name!r} has id {huge.id}; the "
                          f"merge takes ids up to {MAX_CATEGORY_ID} (it looks labels up in a table indexed by id)")
    _check_images(images_data["images"], images_json)
    _check_distinct_names(images_data["images"], images_json)
    known = {img["id"] for img in images_data["images"]}
    skipped: dict[str, str] = {}
    instances = _results_by_image(instances_json, "merge.instances_json", known, images_json, skipped)
    semantic_by_image = None
    if semantic_json is not None:
        semantic_by_image = _results_by_image(semantic_json, "merge.semantic_json", known, images_json,
                                              skipped, image_of=_image_id_or_file(images_data["images"]))
    dataset = MergeInputs(images_data["images"], instances, metadata, semantic_dir=semantic_dir,
                          semantic_by_image=semantic_by_image, semantic_json=semantic_json,
                          score_thresh=rules.score_thresh)
    rules_record = {"rules": dataclasses.asdict(rules), **(rules_origin or {})}
    log.info("merge rules: %s", json.dumps(rules_record))
    describe_outputs(merge_stopped(out_dir / PANOPTIC_NAME, out_dir / f"{PANOPTIC_NAME}.json", len(dataset)))
    remove_outputs(list(remove_first))
    write_json_atomic(out_dir / RULES_FILE, rules_record)
    writer = PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME)
    if str(device).split(":")[0] == "cpu":
        seconds = _merge_all_cpu(dataset, workers, rules, writer, skipped, bar=bar_enabled(progress))
    else:
        seconds = _merge_all(dataset, workers, rules, device, writer, skipped, threads, bar=bar_enabled(progress))
    json_path = writer.write_json()
    write_json_atomic(out_dir / SKIPPED_FILE, skipped)
    seconds["total"] = time.perf_counter() - start
    merged = len(writer.annotations)
    log.info("merged %d images into %s; skipped %d (%s); seconds: %s", merged, json_path, len(skipped),
             out_dir / SKIPPED_FILE, ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return {"json": str(json_path), "merged": merged, "skipped": skipped, "rules": rules_record,
            "seconds": seconds}


def _check_images(images: Any, images_json: Path) -> None:
    """ConfigError naming the entry unless every image has an id, a file_name and a positive
    integer height and width (what the merge reads of it)."""
    if not isinstance(images, list):
        raise ConfigError(f"merge.images_json {images_json}: 'images' must be a list")
    for k, image in enumerate(images):
        sizes_ok = isinstance(image, dict) and all(
            isinstance(image.get(key), int) and not isinstance(image.get(key), bool) and image[key] > 0
            for key in ("height", "width"))
        if not sizes_ok or not _is_image_id(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise ConfigError(f"merge.images_json {images_json}: images[{k}] = {image!r} needs an id, a "
                              "file_name and integer height and width > 0 (an id: a number or a string)")


def _is_image_id(value: Any) -> bool:
    """An int, a finite float or a str (what an image id can be: equal ids find each other)."""
    return (isinstance(value, (int, str)) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value))


def _check_distinct_names(images: list[dict], images_json: Path) -> None:
    """ConfigError before anything is written when two images would write the same PNG (a
    repeated image id, or ids with one file stem); worker processes cannot see each other's."""
    by_name: dict[str, list] = defaultdict(list)
    for image in images:
        by_name[prediction_file_stem(image["id"])].append(image["id"])
    clashes = {name: ids for name, ids in by_name.items() if len(ids) > 1}
    if clashes:
        name, ids = next(iter(clashes.items()))
        raise ConfigError(f"merge.images_json {images_json}: images {ids} would all write {name}.png "
                          f"({len(clashes)} such name(s)); image ids must be distinct")


def _results_by_image(path: Path, key: str, known: set, images_json: Path, skipped: dict[str, str],
                      image_of: Callable[[dict], Any] = lambda r: r.get("image_id")) -> dict[Any, list[dict]]:
    """A COCO results JSON (a list of objects naming their image, by ``image_of``) grouped by image,
    in file order; results for images not in ``images_json`` go to ``skipped``."""
    results = _load_json(path, key)
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ConfigError(f"{key} {path}: must be a list of COCO results (objects), got "
                          f"{type(results).__name__}")
    by_image: dict[Any, list[dict]] = defaultdict(list)
    try:
        for k, r in enumerate(results):
            by_image[image_of(r)].append(r)
    except TypeError as err:  # unhashable: a list or an object
        raise ConfigError(f"{key} {path}: result {k} has image_id {image_of(r)!r}, not an image id "
                          "(a number or a string)") from err
    _check_id_types(set(by_image) - known, known, key, path, images_json)
    for image_id in sorted(set(by_image) - known, key=str):
        skipped.setdefault(str(image_id), f"{path}: results for image {image_id!r} not in {images_json}")
    return dict(by_image)


def _check_id_types(unknown: set, known: set, key: str, path: Path, images_json: Path) -> None:
    """ConfigError when results name known images with ids of another type ("139" for 139): every
    such image would otherwise be merged without them."""
    known_text = {str(i): i for i in known}
    mismatched = sorted((i for i in unknown if str(i) in known_text), key=str)
    if mismatched:
        i = mismatched[0]
        raise ConfigError(f"{key} {path}: image_id {i!r} ({type(i).__name__}) is {known_text[str(i)]!r} "
                          f"({type(known_text[str(i)]).__name__}) in {images_json}; the ids must be "
                          f"of the same type ({len(mismatched)} such id(s))")


def _image_id_or_file(images: list[dict]) -> Callable[[dict], Any]:
    """A semantic entry's image: its ``image_id`` (panopticapi's format), else its ``file_name``'s
    stem matched to the images' (Detectron2's ``sem_seg_predictions.json`` names the input file)."""
    by_stem: dict[str, list] = defaultdict(list)
    for image in images:
        by_stem[Path(str(image["file_name"])).stem].append(image["id"])

    def image_of(entry: dict) -> Any:
        if "image_id" in entry or "file_name" not in entry:
            return entry.get("image_id")
        stem = Path(str(entry["file_name"])).stem
        ids = by_stem.get(stem, [f"file {entry['file_name']}"])
        if len(ids) > 1:
            raise ConfigError(f"merge.semantic_json: entry of file {entry['file_name']!r} could be any of "
                              f"images {ids} (same file stem); give image_id in the entries")
        return ids[0]

    return image_of


def _merge_all_cpu(dataset: MergeInputs, workers: int, rules: MergeThresholds,
                   writer: PanopticPredictionWriter, skipped: dict[str, str], *, bar: bool) -> dict[str, float]:
    """On the CPU: ``workers`` processes (0: this one) each read, merge (numpy) and write whole images,
    like panopticapi's process pool; they are listed in the JSON in their order, bad ones go to
    ``skipped``. Returns the seconds per stage (read, merge, write: summed over processes; wait:
    this process waiting for them)."""
    seconds = {"read": 0.0, "wait": 0.0, "merge": 0.0, "write": 0.0}
    tick = time.perf_counter()
    outcomes = merge_images_cpu(dataset, rules, writer.out_dir, writer.png_dir.name, workers)
    try:
        for out in tqdm(outcomes, total=len(dataset), desc="merge", unit="img", disable=not bar):
            seconds["wait"] += time.perf_counter() - tick
            seconds["read"] += out["seconds"]
            image = dataset.images[out["k"]]
            if out["error"] is not None:
                skipped[str(image["id"])] = out["error"]
                log.warning("skipped image %r: %s", image["id"], out["error"])
            else:
                writer.record(out["annotation"], out["entry"])
                seconds["merge"] += out["merge"]
                seconds["write"] += out["write"]
            tick = time.perf_counter()
    finally:  # an error or a stop signal: the pool ends now (its workers exit at once), not at exit
        outcomes.close()
        remove_stale_temp_files(writer.png_dir, ("*.png",))  # of the writes those workers were in
    return seconds


def _merge_all(dataset: MergeInputs, workers: int, rules: MergeThresholds, device: Any,
               writer: PanopticPredictionWriter, skipped: dict[str, str], threads: int, *,
               bar: bool) -> dict[str, float]:
    """On a GPU: merge the images and list them in the JSON in their order; bad ones go to ``skipped``.

    The DataLoader workers (if any) read and decode, and ``threads`` threads of this process (0:
    inline) each merge one image on ``device`` and write its PNG. Returns the seconds per stage
    (read, merge, write: summed over threads; wait: for the loader)."""
    import torch

    device = torch.device(device)
    from panfpn.data.loader import ignore_stop_signals  # a group SIGTERM / Ctrl-C: this process ends them

    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=as_is, worker_init_fn=ignore_stop_signals)
    seconds = {"read": 0.0, "wait": 0.0, "merge": 0.0, "write": 0.0}

    def merge_and_write(item: dict[str, Any]) -> tuple[dict, dict]:
        if item["error"] is not None:
            raise BadInput(item["error"])
        return _merge_and_write(item, dataset.metadata, rules, device, writer)

    def record(item: dict[str, Any], outcome: Future) -> None:
        try:
            annotation, info = outcome.result()
        except BadInput as err:
            skipped[str(item["image"]["id"])] = str(err)
            log.warning("skipped image %r: %s", item["image"]["id"], err)
            return
        writer.record(annotation, info["entry"])
        seconds["merge"] += info["merge"]
        seconds["write"] += info["write"]

    with _InOrder(threads, record) as jobs:
        tick = time.perf_counter()
        for item in tqdm(loader, total=len(dataset), desc="merge", unit="img", disable=not bar):
            seconds["wait"] += time.perf_counter() - tick
            seconds["read"] += item["seconds"]
            jobs.submit(item, merge_and_write)
            tick = time.perf_counter()
    return seconds


def _merge_and_write(item: Mapping[str, Any], metadata: DatasetMetadata, rules: MergeThresholds,
                     device: Any, writer: PanopticPredictionWriter) -> tuple[dict, dict]:
    """Merge one image's decoded inputs and write its PNG (not yet listed in the JSON); returns
    its annotation and ``{"entry" (its images entry), "merge", "write" (seconds)}``."""
    start = time.perf_counter()
    id_map, segments = _merge_one(item, metadata, rules, device)
    merged = time.perf_counter()
    image = item["image"]
    annotation = writer.add(image["id"], image["file_name"], id_map, segments, record=False)
    entry = {"id": image["id"], "file_name": image["file_name"], "height": int(id_map.shape[0]),
             "width": int(id_map.shape[1])}
    return annotation, {"entry": entry, "merge": merged - start, "write": time.perf_counter() - merged}


class _InOrder:
    """Runs ``job(item)`` in ``threads`` threads (0: at once, inline) and hands each finished
    future to ``done(item, future)`` in submission order, whatever order the threads finish in;
    at most ``2 * threads`` jobs wait at a time."""

    def __init__(self, threads: int, done: Callable[[Any, Future], None]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None
        self.done = done
        self.pending: deque[tuple[Any, Future]] = deque()
        self.limit = 2 * threads

    def submit(self, item: Any, job: Callable[[Any], Any]) -> None:
        if self.pool is None:
            future: Future = Future()
            try:
                future.set_result(job(item))
            except BadInput as err:
                future.set_exception(err)
            self.done(item, future)
            return
        self.pending.append((item, self.pool.submit(job, item)))
        while len(self.pending) > self.limit:
            self.done(*self.pending.popleft())

    def __enter__(self) -> "_InOrder":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            while self.pending and exc[0] is None:
                self.done(*self.pending.popleft())
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


def _merge_one(item: Mapping[str, Any], metadata: DatasetMetadata, rules: MergeThresholds,
               device: Any) -> tuple[Any, list[dict]]:
    """One image's decoded inputs -> (id map on the CPU, segments with dataset ids)."""
    from panfpn.modeling.merge_predictions import merge_predictions

    try:
        id_map, segments = merge_predictions(
            item["sem"].to(device), _box_masks(item, device), item["scores"].to(device),
            item["labels"].to(device), metadata=metadata, rules=rules)
    except ValueError as err:
        raise BadInput(f"image {item['image']['id']!r}: {err}") from err
    return id_map.cpu().numpy(), [
        {"id": s["id"], "category_id": s["category_id"], "isthing": int(s["isthing"]),
         **({"score": s["score"]} if s["score"] is not None else {})} for s in segments]


def _box_masks(item: Mapping[str, Any], device: Any) -> Any:
    """The item's kept instance masks, inside their boxes, on ``device`` (a BoxMasks)."""
    import torch

    from panfpn.modeling.merge import BoxMasks

    return BoxMasks(crops=tuple(torch.from_numpy(c).to(device) for c in item["crops"]),
                    origins=tuple(item["origins"]), size=tuple(item["sem"].shape))
