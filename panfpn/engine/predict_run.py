"""``predict_from_config(cfg) -> dict``: the job behind tools/predict.py.

Runs a model on image files (a file, a folder or a glob) and writes, into the output folder::

    panoptic/<stem>.png     COCO-panoptic id PNG (id = R + 256 G + 256^2 B)
    panoptic.json           one COCO-panoptic JSON for the run: images, annotations, categories
    overlays/<stem>.jpg     the image with coloured segments, outlines and labels (or .png)
    failed.json, failed.txt inputs that were skipped because they could not be read, and why

A file that is not an image or cannot be decoded is reported and skipped; it never stops the run.
Images whose outputs already exist are skipped unless ``predict.overwrite=true``; entries of an
existing ``panoptic.json`` for images not predicted again are kept, so the JSON always describes
the folder. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import FailedImage, ImageFileDataset, list_image_files, output_stems
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.panoptic_io import load_json
from panfpn.utils.atomic import atomic_write, save_image_atomic, write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.setup import setup_logging
from panfpn.evaluation.writer import PanopticPredictionWriter, model_segments_to_dataset
from panfpn.utils.visualize import panoptic_overlay

logger = logging.getLogger("panfpn")

PANOPTIC_NAME = "panoptic"  # panoptic.json + panoptic/ (the writer's layout)
OVERLAY_DIR = "overlays"
# Overlays are photos: JPEG encodes an 800x1216 one in ~8 ms at ~400 KB, PNG in 200-440 ms at ~1.9 MB.
OVERLAY_FORMATS = {"jpg": ("JPEG", {"quality": 92}), "png": ("PNG", {"compress_level": 1})}


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The ``predict`` config section.

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
    """

    input: str | list[str] | None = None
    output_dir: str | None = None
    batch_size: int = 2
    num_workers: int = 0
    overwrite: bool = False
    overlay: bool = True
    overlay_alpha: float = 0.55
    overlay_format: str = "jpg"
    write_threads: int = 2
    recursive: bool = False


def predict_options(cfg: DictConfig) -> PredictOptions:
    """Read and check ``cfg.predict`` (absent keys take :class:`PredictOptions`' defaults)."""
    node = OmegaConf.select(cfg, "predict", default=None)
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    known = [f.name for f in dataclasses.fields(PredictOptions)]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"unknown config key 'predict.{key}'"
                              + (f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {known}"))
    opts = PredictOptions(**values)
    if not opts.input:
        raise ConfigError("config key 'predict.input' must name an image file, a folder or a glob "
                          "(predict.input=path/to/images)")
    if int(opts.batch_size) < 1 or int(opts.num_workers) < 0 or int(opts.write_threads) < 0:
        raise ConfigError(f"config keys 'predict.batch_size' (>= 1), 'predict.num_workers' and "
                          f"'predict.write_threads' (>= 0) got {opts.batch_size}, {opts.num_workers} "
                          f"and {opts.write_threads}")
    if opts.overlay_format not in OVERLAY_FORMATS:
        raise ConfigError(f"config key 'predict.overlay_format' must be one of {sorted(OVERLAY_FORMATS)}, "
                          f"got {opts.overlay_format!r}")
    if not 0.0 <= float(opts.overlay_alpha) <= 1.0:
        raise ConfigError(f"config key 'predict.overlay_alpha' must lie in [0, 1], got {opts.overlay_alpha}")
    return opts


def predict_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict ``cfg.weights`` on ``cfg.predict.input``; model, labels and test transform come from
    the checkpoint's record when it has one, else from the config (``cfg.data.val.transforms``);
    see :func:`panfpn.engine.inference_model.build_inference_model` (``overrides`` as there).

    Returns the summary of :func:`predict_images`.
    """
    opts = predict_options(cfg)
    validate_config(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "predict"]))
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to predict with "
                          "(weights=path/to/model.pth)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("tools/predict.py runs in one process: launch it with python, not torchrun "
                           f"(WORLD_SIZE={os.environ['WORLD_SIZE']})")
    device = du.init_distributed(cfg.device)
    out_dir = Path(opts.output_dir if opts.output_dir else cfg.output_dir)
    setup_logging(out_dir)
    paths = list_image_files(opts.input if isinstance(opts.input, str) else list(opts.input),
                             recursive=bool(opts.recursive))
    built = build_inference_model(cfg, overrides)
    metadata, transforms = built.metadata, built.transform()
    model = built.model.to(device)
    logger.info("predicting %d input file(s) into %s (test transform: %s)", len(paths), out_dir, transforms)
    return predict_images(model, paths, metadata, out_dir, transforms=transforms, device=device,
                          batch_size=int(opts.batch_size), num_workers=int(opts.num_workers),
                          overwrite=bool(opts.overwrite), overlay=bool(opts.overlay),
                          overlay_alpha=float(opts.overlay_alpha), overlay_format=str(opts.overlay_format),
                          write_threads=int(opts.write_threads))


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
    """Where and how one run writes: the writer (PNG + JSON) and the overlay settings."""

    writer: PanopticPredictionWriter
    metadata: DatasetMetadata
    overlay_dir: Path | None
    overlay_format: str
    alpha: float

    def files(self, stem: str) -> list[Path]:
        overlay = [self.overlay_dir / f"{stem}.{self.overlay_format}"] if self.overlay_dir else []
        return [self.writer.png_dir / f"{stem}.png", *overlay]


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module, paths: Sequence[str | os.PathLike], metadata: DatasetMetadata,
    out_dir: str | os.PathLike, *, transforms: Callable | None = None, device: torch.device | str = "cpu",
    batch_size: int = 2, num_workers: int = 0, overwrite: bool = False, overlay: bool = True,
    overlay_alpha: float = 0.55, overlay_format: str = "jpg", write_threads: int = 2, progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` (eval output of docs/interfaces.md section 3) on image files; write results.

    ``device`` is the model's (batches are pinned for it when it is a GPU). Encoding PNGs and
    drawing overlays runs in ``write_threads`` threads (0: inline) while the
    model works on the next batch; the JSON lists the images in input order all the same.

    Returns ``{"output_dir", "json", "num_inputs", "predicted": [stem], "skipped": [stem],
    "failed": [{"path", "error"}], "seconds", "images_per_s"}`` (``images_per_s`` counts the
    predicted images over the whole loop: reading, model, writing).
    """
    if overlay_format not in OVERLAY_FORMATS:
        raise ValueError(f"overlay_format must be one of {sorted(OVERLAY_FORMATS)}, got {overlay_format!r}")
    out_dir = Path(out_dir)
    device = torch.device(device)
    paths = [Path(p) for p in paths]
    stems = output_stems(paths)
    targets = _Targets(PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME), metadata,
                       out_dir / OVERLAY_DIR if overlay else None, overlay_format, float(overlay_alpha))
    if targets.overlay_dir is not None:
        targets.overlay_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped, kept = _plan(paths, stems, targets, overwrite)
    dataset = ImageFileDataset([paths[i] for i in todo], transforms=transforms, keep_original=overlay,
                               stems=[stems[i] for i in todo])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_predict,
                        pin_memory=device.type == "cuda")
    model.eval()
    predicted: list[str] = []
    failed: list[FailedImage] = []
    pool = ThreadPoolExecutor(max_workers=write_threads) if write_threads > 0 else None
    pending: deque[Future] = deque()
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    with logging_redirect_tqdm(loggers=[logger]):  # log lines above the progress bar, not through it
        try:
            for batch, bad in loader:
                for f in bad:
                    logger.warning("skipped %s: %s", f.path, f.error)
                failed.extend(bad)
                for i, out in enumerate(model(batch) if batch is not None else []):
                    id_map, segments = out["panoptic"]
                    job = functools.partial(_write_one, targets, batch["image_ids"][i], batch["paths"][i],
                                            id_map.cpu().numpy(), model_segments_to_dataset(segments, metadata),
                                            batch["orig_images"][i])
                    if pool is None:
                        job()
                    else:
                        pending.append(pool.submit(job))
                        while len(pending) > 2 * write_threads:  # bound the images held in memory
                            pending.popleft().result()
                    predicted.append(batch["image_ids"][i])
                bar.update(len(bad) + (len(batch["image_ids"]) if batch is not None else 0))
            while pending:
                pending.popleft().result()
        finally:
            bar.close()
            if pool is not None:
                # Finish the queued writes (at most 2 x write_threads images) even after an error:
                # those predictions exist, and cancelling them raced with the JSON listing.
                pool.shutdown(wait=True)
            # also after an error or Ctrl-C, so what was written is listed in the JSON
            _finish_json(targets.writer, kept, stems, paths)
            _write_failed(out_dir, failed)
    seconds = time.perf_counter() - start
    logger.info("predicted %d image(s), skipped %d existing, %d failed; results in %s",
                len(predicted), len(skipped), len(failed), out_dir)
    if failed:
        logger.warning("%d input(s) could not be read; listed in %s", len(failed), out_dir / "failed.txt")
    return {"output_dir": str(out_dir), "json": str(targets.writer.json_path), "num_inputs": len(paths),
            "predicted": predicted, "skipped": skipped,
            "failed": [dataclasses.asdict(f) for f in failed], "seconds": seconds,
            "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}


def _plan(paths: list[Path], stems: list[str], targets: _Targets,
          overwrite: bool) -> tuple[list[int], list[str], list[tuple[dict | None, dict]]]:
    """Inputs to predict (indices), stems skipped because outputs exist, and the entries of an
    existing JSON to keep (images not predicted now, so the JSON keeps describing the folder)."""
    previous = _previous_entries(targets.writer.json_path, overwrite)
    todo, skipped = [], []
    for i, stem in enumerate(stems):
        existing = [p for p in targets.files(stem) if p.exists()]
        if overwrite or not existing:
            todo.append(i)
            previous.pop(stem, None)
            continue
        skipped.append(stem)
        if stem in previous:
            logger.info("skipped %s: outputs exist (predict.overwrite=true redoes them)", paths[i])
        else:
            logger.warning("skipped %s: %s exists but %s has no entry for it (an interrupted run?); "
                           "predict.overwrite=true redoes it", paths[i], existing[0], targets.writer.json_path)
    return todo, skipped, list(previous.values())


def _previous_entries(json_path: Path, overwrite: bool) -> dict[Any, tuple[dict | None, dict]]:
    """image_id -> (images entry or None, annotation) of an existing prediction JSON."""
    if not json_path.is_file():
        return {}
    try:
        data = load_json(json_path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{json_path} has no 'annotations' list")
    except ValueError as e:
        if overwrite:
            logger.warning("replacing unreadable %s (%s)", json_path, e)
            return {}
        raise ValueError(f"{e}; it is not a prediction JSON of ours: move it away or set "
                         f"predict.overwrite=true") from None
    images = {img["id"]: img for img in data.get("images", [])}
    return {ann["image_id"]: (images.get(ann["image_id"]), ann) for ann in data["annotations"]}


def _finish_json(writer: PanopticPredictionWriter, kept: list[tuple[dict | None, dict]], stems: list[str],
                 paths: list[Path]) -> None:
    """Kept entries first, then this run's in input order (write threads finish in any order)."""
    order = {stem: i for i, stem in enumerate(stems)}
    annotations = sorted(writer.annotations, key=lambda a: order[a["image_id"]])
    images = sorted(writer.images, key=lambda img: order[img["id"]])
    for img in images:
        img["path"] = str(paths[order[img["id"]]])
    writer.annotations = [ann for _, ann in kept] + annotations
    writer.images = [img for img, _ in kept if img is not None] + images
    writer.write_json()


def _write_one(targets: _Targets, stem: str, path: str, id_map: np.ndarray, segments: list[dict],
               image: np.ndarray | None) -> None:
    """PNG + JSON entry (thing scores added) + overlay of one image; thread-safe (distinct files,
    list appends)."""
    ann = targets.writer.add(stem, stem + Path(path).suffix, id_map, segments)
    scores = {s["id"]: s["score"] for s in segments if "score" in s}
    for info in ann["segments_info"]:
        if info["id"] in scores:
            info["score"] = scores[info["id"]]
    if targets.overlay_dir is not None and image is not None:
        vis = panoptic_overlay(image, id_map, segments, targets.metadata, alpha=targets.alpha)
        fmt, options = OVERLAY_FORMATS[targets.overlay_format]
        save_image_atomic(targets.overlay_dir / f"{stem}.{targets.overlay_format}", vis, fmt, **options)


def _write_failed(out_dir: Path, failed: list[FailedImage]) -> None:
    """failed.json (``{"failed": [{"path", "error"}]}``) and failed.txt (``path<TAB>error`` lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "failed.json", {"failed": [dataclasses.asdict(f) for f in failed]})
    lines = "".join(f"{f.path}\t{f.error}\n" for f in failed)
    atomic_write(out_dir / "failed.txt", lambda f: f.write(lines), mode="w")
