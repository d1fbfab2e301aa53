"""``predict_from_config(cfg) -> dict``: the job behind tools/predict.py.

Runs a model on image files (a file, a folder or a glob) and writes, into the output folder::

    panoptic/<stem>.png     COCO-panoptic id PNG (id = R + 256 G + 256^2 B)
    panoptic.json           one COCO-panoptic JSON for the run: images, annotations, categories
    overlays/<stem>.jpg     the image with coloured segments, outlines and labels (or .png)
    semantic/<stem>.png     with predict.semantic=true: semantic labels as dataset category ids
    failed.json, failed.txt inputs that were skipped because they could not be read, and why

``<stem>`` is unique per input (:func:`output_stems`); the JSON's ``image_id`` follows
``predict.image_id`` (:func:`image_ids`), e.g. createPanopticImgs' ``<city>_<seq>_<frame>``.

A file that is not an image or cannot be decoded is reported and skipped; it never stops the run.
An image counts as done only when the JSON lists it AND all its files exist; done images are
skipped unless ``predict.overwrite=true``, anything else is (re)done. An image is listed only
after all its files are written, and the JSON is rewritten (atomically) every
``predict.json_every`` images and at the end, so after a crash or ``kill -9`` the JSON never lists
a missing file and a rerun completes exactly the rest. Entries of an existing JSON for images
not in this run are kept while their PNG exists.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import FailedImage, ImageFileDataset, list_image_files, output_stems
from panfpn.data.metadata import DatasetMetadata
from panfpn.utils.atomic import atomic_write, remove_stale_temp_files, save_image_atomic, write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import IMAGE_ID_RULES, ConfigError, section_values, validate_config
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.job_setup import fit_threads_to_cpus, setup_logging
from panfpn.modeling.postprocess import box_instance_masks
from panfpn.evaluation.writer import (PanopticPredictionWriter, SemanticPredictionWriter,
                                     model_segments_to_dataset)
from panfpn.utils.json_file import load_json
from panfpn.deploy.predict_onnx import predict_onnx
from panfpn.utils.visualize import panoptic_overlay

logger = logging.getLogger("panfpn")

PANOPTIC_NAME = "panoptic"  # panoptic.json + panoptic/ (the writer's layout)
OVERLAY_DIR = "overlays"
SEMANTIC_DIR = "semantic"
# Overlays are photos: JPEG encodes an 800x1216 one in ~8 ms at ~400 KB, PNG in 200-440 ms at ~1.9 MB.
OVERLAY_FORMATS = {"jpg": ("JPEG", {"quality": 92}), "png": ("PNG", {"compress_level": 1})}


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The ``predict`` config section, checked by :data:`panfpn.engine.config.CHECKS`; no defaults
    here: every value comes from the config (defaults: configs/config.yaml).

    Attributes:
        input: an image file, a folder, a glob pattern, or a list of them.
        output_dir: where results go; None: the run's ``output_dir`` (hydra's run dir).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding and resizing images (0: in the main process).
        overwrite: redo images whose outputs exist (default: skip them).
        overlay: also write the coloured overlays.
        overlay_alpha: weight of segment colours in the overlays.
        overlay_format: ``jpg`` (fast, small) or ``png`` (lossless).
        write_threads: threads encoding PNGs and drawing overlays while the model runs (0: inline).
        recursive: descend into subfolders of a folder input (and let ``**`` span folders).
        image_id: how the JSON's ``image_id`` is made from a file (see :func:`image_ids`):
            ``auto``, ``stem``, ``cityscapes``, ``coco_int`` or a regular expression.
        json_every: rewrite ``panoptic.json`` after every this many finished images (and at the end).
        semantic: also write ``semantic/<stem>.png`` (semantic labels as dataset category ids).
        backend: ``torch`` (the model) or ``onnxruntime`` (``weights`` is an exported .onnx pipeline).
    """

    input: str | list[str] | None
    output_dir: str | None
    batch_size: int
    num_workers: int
    overwrite: bool
    overlay: bool
    overlay_alpha: float
    overlay_format: str
    write_threads: int
    recursive: bool
    image_id: str
    json_every: int
    semantic: bool
    backend: str


def predict_options(cfg: DictConfig) -> PredictOptions:
    """``cfg.predict`` as :class:`PredictOptions`, checked by the config table (unknown keys with a
    did-you-mean, types, ranges, choices); ``predict.input`` must be set."""
    opts = PredictOptions(**section_values(cfg, "predict"))
    if not opts.input:
        raise ConfigError("config key 'predict.input' must name an image file, a folder or a glob "
                          "(predict.input=path/to/images)")
    return opts


# createPanopticImgs: image id = the gtFine file name without "_gtFine_instanceIds.png", i.e. the
# leftImg8bit file name without "_leftImg8bit.png": <city>_<sequence>_<frame>.
_CITYSCAPES_STEM = re.compile(r"(?P<id>[^/\\]+_\d+_\d+)_leftImg8bit")
ID_RULES = IMAGE_ID_RULES


def _id_rule(rule: str) -> str | re.Pattern:
    """A named rule, or the compiled regular expression (one group, or a group named ``id``)."""
    if rule in ID_RULES:
        return rule
    try:
        pattern = re.compile(rule)
    except re.error as e:
        raise ConfigError(f"config key 'predict.image_id' must be one of {list(ID_RULES)} or a regular "
                          f"expression, got {rule!r} ({e})") from None
    if pattern.groups < 1:
        raise ConfigError(f"config key 'predict.image_id': the regular expression {rule!r} needs a "
                          "group (the id), e.g. '(.+)_leftImg8bit'")
    return pattern


def _id_of(path: Path, rule: str | re.Pattern) -> str | int | None:
    """One file's image id under a rule; None when the file does not follow it."""
    stem = path.stem
    if rule == "cityscapes":
        m = _CITYSCAPES_STEM.fullmatch(stem)
        return m.group("id") if m else None
    if rule == "coco_int":
        return int(stem) if stem.isascii() and stem.isdigit() else None
    m = rule.fullmatch(stem)  # type: ignore[union-attr]
    if m is None:
        return None
    return m.group("id") if "id" in rule.groupindex else m.group(1)  # type: ignore[union-attr]


def image_ids(paths: Sequence[Path], stems: Sequence[str], rule: str = "auto") -> list[str | int]:
    """The JSON ``image_id`` of each input, so predictions match the dataset's ground truth.

    ``stem``: the output stem. ``cityscapes``: ``<city>_<seq>_<frame>_leftImg8bit.*`` gives
    createPanopticImgs' ``<city>_<seq>_<frame>``. ``coco_int``: an all-digit stem as an int
    (``000000000139.jpg`` -> 139, COCO's ids). A regular expression: matched against the whole
    file stem, its group ``id`` (or first group) is the id. ``auto``: ``cityscapes`` when every
    file follows it, else ``coco_int`` when every stem is digits, else ``stem``; and ``stem`` when
    the chosen rule would give two files one id.

    Raises:
        ConfigError: with an explicit rule, a file that does not follow it or two files with one id.
    """
    if rule == "auto":
        for candidate in ("cityscapes", "coco_int"):
            ids = [_id_of(p, candidate) for p in paths]
            if paths and None not in ids:
                if len(set(ids)) == len(ids):
                    return ids  # type: ignore[return-value]
                logger.warning("predict.image_id=auto: the %s rule gives two inputs one id; using the "
                               "output stems", candidate)
                break
        return list(stems)
    if rule == "stem":
        return list(stems)
    compiled = _id_rule(rule)
    ids: list[str | int] = []
    owner: dict[str | int, Path] = {}
    for p in paths:
        image_id = _id_of(p, compiled)
        if image_id is None:
            raise ConfigError(f"config key 'predict.image_id'={rule!r}: {p} does not follow the rule")
        if image_id in owner:
            raise ConfigError(f"config key 'predict.image_id'={rule!r}: {owner[image_id]} and {p} both "
                              f"get image id {image_id!r}; use predict.image_id=stem")
        owner[image_id] = p
        ids.append(image_id)
    return ids


def predict_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict ``cfg.weights`` on ``cfg.predict.input``; model, labels and test transform come from
    the checkpoint's record when it has one, else from the config (``cfg.data.val.transforms``);
    see :func:`panfpn.engine.inference_model.build_inference_model` (``overrides`` as there).

    Returns the summary of :func:`predict_images`.
    """
    validate_config(cfg)
    opts = predict_options(cfg)
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to predict with "
                          "(weights=path/to/model.pth)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("tools/predict.py runs in one process: launch it with python, not torchrun "
                           f"(WORLD_SIZE={os.environ['WORLD_SIZE']})")
    device = du.init_distributed(cfg.device)
    out_dir = Path(opts.output_dir if opts.output_dir else cfg.output_dir)
    setup_logging(out_dir)
    fit_threads_to_cpus()
    paths = list_image_files(opts.input if isinstance(opts.input, str) else list(opts.input),
                             recursive=bool(opts.recursive))
    if opts.backend == "onnxruntime":  # the exported pipeline: panfpn/deploy/predict_onnx.py
        return predict_onnx(str(cfg.weights), paths, out_dir, opts)
    built = build_inference_model(cfg, overrides)
    metadata, transforms = built.metadata, built.transform()
    model = built.model.to(device)
    logger.info("predicting %d input file(s) into %s (test transform: %s)", len(paths), out_dir, transforms)
    return predict_images(model, paths, metadata, out_dir, transforms=transforms, device=device,
                          batch_size=int(opts.batch_size), num_workers=int(opts.num_workers),
                          overwrite=bool(opts.overwrite), overlay=bool(opts.overlay),
                          overlay_alpha=float(opts.overlay_alpha), overlay_format=str(opts.overlay_format),
                          write_threads=int(opts.write_threads), image_id=str(opts.image_id),
                          json_every=int(opts.json_every), semantic=bool(opts.semantic))


def collate_predict(items: Sequence[dict | FailedImage]) -> tuple[dict | None, list[FailedImage]]:
    """Batch the readable samples (``collate_panoptic`` + ``paths`` and ``orig_images`` lists) and
    pass the failures through; the batch is None when no file of the chunk could be read."""
    failed = [s for s in items if isinstance(s, FailedImage)]
    good = [s for s in items if not isinstance(s, FailedImage)]
    if not good:
        return None, failed
    batch = collate_panoptic(good)
    batch["paths"] = [s["path"] for s in good]
    batch["orig_images"] = [s.get("orig_image") for s in good]
    return batch, failed


@dataclasses.dataclass(frozen=True)
class _Targets:
    """Where and how one run writes: the writers (PNG + JSON, semantic PNGs) and the overlay settings."""

    writer: PanopticPredictionWriter
    metadata: DatasetMetadata
    overlay_dir: Path | None
    overlay_format: str
    alpha: float
    semantic: SemanticPredictionWriter | None = None

    def files(self, stem: str) -> list[Path]:
        """Every file one image's outputs consist of."""
        overlay = [self.overlay_dir / f"{stem}.{self.overlay_format}"] if self.overlay_dir else []
        semantic = [self.semantic.out_dir / f"{stem}.png"] if self.semantic else []
        return [self.writer.png_dir / f"{stem}.png", *overlay, *semantic]


class _JsonState:
    """The JSON being built: entries kept from an earlier run, then this run's in input order;
    rewritten atomically every ``every`` recorded images (:meth:`maybe_write`) and at the end."""

    def __init__(self, writer: PanopticPredictionWriter, kept: list[tuple[dict, dict]],
                 stems: list[str], paths: list[Path], every: int) -> None:
        self.writer, self.kept, self.every = writer, kept, every
        self.order = {f"{stem}.png": i for i, stem in enumerate(stems)}
        self.paths = paths
        self.written = 0

    def write(self) -> None:
        images, annotations = self.writer.snapshot()
        pairs = sorted(zip(images, annotations), key=lambda pair: self.order[pair[1]["file_name"]])
        for img, ann in pairs:
            img["path"] = str(self.paths[self.order[ann["file_name"]]])
        data = {"images": [img for img, _ in self.kept] + [img for img, _ in pairs],
                "annotations": [ann for _, ann in self.kept] + [ann for _, ann in pairs],
                "categories": self.writer.metadata.to_coco_categories()}
        write_json_atomic(self.writer.json_path, data)
        self.written = len(pairs)

    def maybe_write(self) -> None:
        if len(self.writer.annotations) - self.written >= self.every:
            self.write()


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module, paths: Sequence[str | os.PathLike], metadata: DatasetMetadata,
    out_dir: str | os.PathLike, *, transforms: Callable | None = None, device: torch.device | str = "cpu",
    batch_size: int = 2, num_workers: int = 0, overwrite: bool = False, overlay: bool = True,
    overlay_alpha: float = 0.55, overlay_format: str = "jpg", write_threads: int = 2, progress: bool = True,
    image_id: str = "auto", json_every: int = 50, semantic: bool = False,
) -> dict[str, Any]:
    """Run ``model`` (eval output of docs/interfaces.md section 3) on image files; write results.

    ``device`` is the model's (batches are pinned for it when it is a GPU). Encoding PNGs and
    drawing overlays runs in ``write_threads`` threads (0: inline) while the
    model works on the next batch; the JSON lists the images in input order all the same.
    ``image_id`` is the rule of :func:`image_ids`; the JSON is rewritten every ``json_every``
    finished images; ``semantic`` also writes semantic label PNGs.

    Returns ``{"output_dir", "json", "num_inputs", "predicted": [stem], "skipped": [stem],
    "failed": [{"path", "error"}], "seconds", "images_per_s"}`` (``images_per_s`` counts the
    predicted images over the whole loop: reading, model, writing).
    """
    if overlay_format not in OVERLAY_FORMATS:
        raise ValueError(f"overlay_format must be one of {sorted(OVERLAY_FORMATS)}, got {overlay_format!r}")
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    stems = output_stems(paths)
    ids = dict(zip(stems, image_ids(paths, stems, image_id)))
    targets = _prepare_targets(out_dir, metadata, overlay=overlay, overlay_format=overlay_format,
                               overlay_alpha=float(overlay_alpha), semantic=semantic)
    todo, skipped, kept = _plan(paths, stems, ids, targets, overwrite)
    state = _JsonState(targets.writer, kept, stems, paths, max(1, int(json_every)))
    dataset = ImageFileDataset([paths[i] for i in todo], transforms=transforms, keep_original=overlay,
                               stems=[stems[i] for i in todo])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_predict,
                        pin_memory=torch.device(device).type == "cuda")
    model.eval()
    start = time.perf_counter()
    predicted, failed = _predict_all(model, loader, targets, ids, state, write_threads=write_threads,
                                     progress=progress)
    return _summary(targets, len(paths), predicted, skipped, failed, time.perf_counter() - start)


def _predict_all(model: torch.nn.Module, loader: DataLoader, targets: "_Targets", ids: dict[str, Any],
                 state: _JsonState, *, write_threads: int, progress: bool) -> tuple[list[str], list[FailedImage]]:
    """Predict every batch of ``loader`` and write its files (``write_threads`` threads); the JSON
    and the failure lists are written also after an error or Ctrl-C, so that what was written is
    listed. Returns the predicted stems and the unreadable inputs."""
    predicted: list[str] = []
    failed: list[FailedImage] = []
    queue = _WriteQueue(write_threads)
    bar = tqdm(total=len(loader.dataset), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    with logging_redirect_tqdm(loggers=[logger]):  # log lines above the progress bar, not through it
        try:
            for batch, bad in loader:
                for f in bad:
                    logger.warning("skipped %s: %s", f.path, f.error)
                failed.extend(bad)
                predicted += _predict_batch(model, batch, targets, ids, targets.metadata, queue)
                bar.update(len(bad) + (len(batch["image_ids"]) if batch is not None else 0))
                state.maybe_write()
            queue.drain()
        finally:
            bar.close()
            queue.close()
            state.write()
            _write_failed(targets.writer.out_dir, failed)
    return predicted, failed


def _summary(targets: "_Targets", num_inputs: int, predicted: list[str], skipped: list[str],
             failed: list[FailedImage], seconds: float) -> dict[str, Any]:
    """Log the run's counts and return :func:`predict_images`'s result dict."""
    out_dir = targets.writer.out_dir
    logger.info("predicted %d image(s), skipped %d existing, %d failed; results in %s",
                len(predicted), len(skipped), len(failed), out_dir)
    if failed:
        logger.warning("%d input(s) could not be read; listed in %s", len(failed), out_dir / "failed.txt")
    return {"output_dir": str(out_dir), "json": str(targets.writer.json_path), "num_inputs": num_inputs,
            "predicted": predicted, "skipped": skipped,
            "failed": [dataclasses.asdict(f) for f in failed], "seconds": seconds,
            "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}


def _prepare_targets(out_dir: Path, metadata: DatasetMetadata, *, overlay: bool, overlay_format: str,
                     overlay_alpha: float, semantic: bool) -> "_Targets":
    """The run's writers and folders; temp files a killed earlier run left there are removed."""
    targets = _Targets(PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME), metadata,
                       out_dir / OVERLAY_DIR if overlay else None, overlay_format, overlay_alpha,
                       SemanticPredictionWriter(out_dir / SEMANTIC_DIR, metadata) if semantic else None)
    if targets.overlay_dir is not None:
        targets.overlay_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps([out_dir, targets.writer.png_dir, targets.overlay_dir,
                         targets.semantic.out_dir if targets.semantic else None])
    return targets


class _WriteQueue:
    """Runs write jobs in ``threads`` threads (inline when 0) while the model works on, holding at
    most 2 x ``threads`` images in memory."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None
        self.pending: deque[Future] = deque()

    def submit(self, job: Callable[[], None]) -> None:
        if self.pool is None:
            job()
            return
        self.pending.append(self.pool.submit(job))
        while len(self.pending) > 2 * self.threads:  # bound the images held in memory
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued write; re-raises the first that failed."""
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Finish the queued writes, also after an error (those predictions exist, and cancelling
        them raced with the JSON listing); raises nothing, so the JSON is still written."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _predict_batch(model: torch.nn.Module, batch: dict | None, targets: "_Targets", ids: dict[str, Any],
                   metadata: DatasetMetadata, queue: _WriteQueue) -> list[str]:
    """Run the model on one batch and queue the writes of its images; returns their stems."""
    if batch is None:
        return []
    with box_instance_masks():  # predict never reads instance masks: keep them in boxes
        outputs = model(batch)
    stems = []
    for i, out in enumerate(outputs):
        stem = batch["image_ids"][i]
        id_map, segments = out["panoptic"]
        sem = out["sem_seg"].cpu().numpy() if targets.semantic is not None else None
        queue.submit(functools.partial(_write_one, targets, stem, ids[stem], batch["paths"][i],
                                       id_map.cpu().numpy(), model_segments_to_dataset(segments, metadata),
                                       batch["orig_images"][i], sem))
        stems.append(stem)
    return stems


def _plan(paths: list[Path], stems: list[str], ids: dict[str, Any], targets: _Targets,
          overwrite: bool) -> tuple[list[int], list[str], list[tuple[dict, dict]]]:
    """Inputs to predict (indices), stems skipped as done, and the entries of an existing JSON to
    keep (images not in this run whose PNG exists, so the JSON keeps describing the folder).

    Done = the JSON lists the file under the same image id AND every output file exists. Anything
    else (outputs of a crashed run with no entry, an entry with a missing file) is redone.
    """
    previous = _previous_entries(targets.writer.json_path, overwrite)
    todo, skipped = [], []
    for i, stem in enumerate(stems):
        entry = previous.get(f"{stem}.png")
        if not overwrite and entry is not None and _is_done(entry, paths[i], ids[stem], targets.files(stem)):
            skipped.append(stem)  # its entry stays listed, at its place
            logger.info("skipped %s: done (predict.overwrite=true redoes it)", paths[i])
            continue
        previous.pop(f"{stem}.png", None)
        if entry is None and not overwrite and any(p.exists() for p in targets.files(stem)):
            logger.warning("redoing %s: outputs exist but %s does not list them (an interrupted run?)",
                           paths[i], targets.writer.json_path)
        todo.append(i)
    new_ids = {ids[stems[i]] for i in todo}
    kept = []
    for name, (img, ann) in previous.items():
        if not (targets.writer.png_dir / name).is_file():
            logger.warning("dropping %s from %s: its PNG is missing", name, targets.writer.json_path)
        elif ann["image_id"] in new_ids:
            logger.warning("dropping %s from %s: image id %r is now another input's", name,
                           targets.writer.json_path, ann["image_id"])
        else:
            kept.append((img, ann))
    return todo, skipped, kept


# panfpn.utils.atomic's temp names: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
def _remove_stale_temps(folders: list[Path | None]) -> None:
    """Delete temp files that a killed run's atomic writes left in our output folders (one
    output folder belongs to one run at a time)."""
    for folder in folders:
        stale = remove_stale_temp_files(folder) if folder is not None else []
        if stale:
            logger.warning("removed %d temporary file(s) of an interrupted run from %s", len(stale), folder)


def _is_done(entry: tuple[dict, dict], path: Path, image_id: Any, files: list[Path]) -> bool:
    """A listed image is done when it is the same input (path, image id) and all its files exist."""
    img, ann = entry
    same_input = ann["image_id"] == image_id and img.get("path", str(path)) == str(path)
    return same_input and all(p.exists() for p in files)


def _previous_entries(json_path: Path, overwrite: bool) -> dict[str, tuple[dict, dict]]:
    """PNG file name -> (images entry, annotation) of an existing prediction JSON."""
    if not json_path.is_file():
        return {}
    try:
        data = load_json(json_path, what="prediction JSON", expect=dict)
        if not isinstance(data.get("annotations"), list):
            raise ValueError(f"{json_path} has no 'annotations' list")
    except ValueError as e:
        if overwrite:
            logger.warning("replacing unreadable %s (%s)", json_path, e)
            return {}
        raise ValueError(f"{e}; it is not a prediction JSON of ours: move it away or set "
                         f"predict.overwrite=true") from None
    images = {img["id"]: img for img in data.get("images", [])}
    return {ann["file_name"]: (images.get(ann["image_id"], {"id": ann["image_id"]}), ann)
            for ann in data["annotations"]}


def _write_one(targets: _Targets, stem: str, image_id: Any, path: str, id_map: np.ndarray,
               segments: list[dict], image: np.ndarray | None, sem: np.ndarray | None) -> None:
    """PNG, overlay and semantic PNG of one image, then its JSON entry (listed only once every file
    exists); thread-safe (distinct files, locked lists)."""
    ann = targets.writer.add(image_id, Path(path).name, id_map, segments, png_stem=stem, record=False)
    if targets.overlay_dir is not None and image is not None:
        vis = panoptic_overlay(image, id_map, segments, targets.metadata, alpha=targets.alpha)
        fmt, options = OVERLAY_FORMATS[targets.overlay_format]
        save_image_atomic(targets.overlay_dir / f"{stem}.{targets.overlay_format}", vis, fmt, **options)
    if targets.semantic is not None and sem is not None:
        targets.semantic.add(image_id, sem, png_stem=stem)
    h, w = id_map.shape
    targets.writer.record(ann, {"id": image_id, "file_name": Path(path).name, "height": h, "width": w})


def _write_failed(out_dir: Path, failed: list[FailedImage]) -> None:
    """failed.json (``{"failed": [{"path", "error"}]}``) and failed.txt (``path<TAB>error`` lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "failed.json", {"failed": [dataclasses.asdict(f) for f in failed]})
    lines = "".join(f"{f.path}\t{f.error}\n" for f in failed)
    atomic_write(out_dir / "failed.txt", lambda f: f.write(lines), mode="w")
