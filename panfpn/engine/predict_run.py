"""``predict_from_config(cfg) -> dict``: the job behind tools/predict.py.

Runs a model on image files (a file, a folder or a glob) and writes, into the output folder::

    panoptic/<stem>.png     COCO-panoptic id PNG (id = R + 256 G + 256^2 B)
    panoptic.json           one COCO-panoptic JSON for the run: images, annotations, categories
    overlays/<stem>.png     the image with coloured segments, outlines and labels
    failed.json, failed.txt inputs that were skipped because they could not be read, and why

A file that is not an image or cannot be decoded is reported and skipped; it never stops the run.
Images whose outputs already exist are skipped (their entries in an existing ``panoptic.json``
are kept) unless ``predict.overwrite=true``. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import FailedImage, ImageFileDataset, list_image_files, output_stems
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.panoptic_io import load_json, write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.setup import build_metadata, build_model_from_config, setup_logging
from panfpn.evaluation.writer import PanopticPredictionWriter, model_segments_to_dataset
from panfpn.utils.visualize import panoptic_overlay

logger = logging.getLogger("panfpn")

PANOPTIC_NAME = "panoptic"  # panoptic.json + panoptic/ (the writer's layout)
OVERLAY_DIR = "overlays"


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
        recursive: descend into subfolders of a folder input (and let ``**`` span folders).
    """

    input: str | list[str] | None = None
    output_dir: str | None = None
    batch_size: int = 2
    num_workers: int = 0
    overwrite: bool = False
    overlay: bool = True
    overlay_alpha: float = 0.55
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
    if int(opts.batch_size) < 1 or int(opts.num_workers) < 0:
        raise ConfigError(f"config keys 'predict.batch_size' (>= 1) and 'predict.num_workers' (>= 0) "
                          f"got {opts.batch_size} and {opts.num_workers}")
    if not 0.0 <= float(opts.overlay_alpha) <= 1.0:
        raise ConfigError(f"config key 'predict.overlay_alpha' must lie in [0, 1], got {opts.overlay_alpha}")
    return opts


def predict_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Predict ``cfg.weights`` on ``cfg.predict.input`` with the ``cfg.data.val`` test transform.

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
    metadata = build_metadata(cfg)
    transforms_cfg = OmegaConf.select(cfg, "data.val.transforms", default=None)
    transforms = instantiate(transforms_cfg) if transforms_cfg is not None else None
    model = build_model_from_config(cfg).to(device)
    logger.info("predicting %d input file(s) into %s (test transform: %s)", len(paths), out_dir, transforms)
    return predict_images(model, paths, metadata, out_dir, transforms=transforms, device=device,
                          batch_size=int(opts.batch_size), num_workers=int(opts.num_workers),
                          overwrite=bool(opts.overwrite), overlay=bool(opts.overlay),
                          overlay_alpha=float(opts.overlay_alpha))


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


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module, paths: Sequence[str | os.PathLike], metadata: DatasetMetadata,
    out_dir: str | os.PathLike, *, transforms: Callable | None = None, device: torch.device | str = "cpu",
    batch_size: int = 2, num_workers: int = 0, overwrite: bool = False, overlay: bool = True,
    overlay_alpha: float = 0.55, progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` (eval output of docs/interfaces.md section 3) on image files; write results.

    Returns ``{"output_dir", "json", "num_inputs", "predicted": [stem], "skipped": [stem],
    "failed": [{"path", "error"}], "seconds", "images_per_s"}`` (``images_per_s`` counts the
    predicted images over the whole loop: reading, model, writing).
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    paths = [Path(p) for p in paths]
    stems = output_stems(paths)
    writer = PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME)
    overlay_dir = out_dir / OVERLAY_DIR
    if overlay:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = _plan(paths, stems, writer, overlay_dir if overlay else None, overwrite)
    dataset = ImageFileDataset([paths[i] for i in todo], transforms=transforms, keep_original=overlay,
                               stems=[stems[i] for i in todo])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_predict)
    model.eval()
    predicted: list[str] = []
    failed: list[FailedImage] = []
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for batch, bad in loader:
            for f in bad:
                logger.warning("skipped %s: %s", f.path, f.error)
            failed.extend(bad)
            if batch is not None:
                outputs = model(batch)
                for i, out in enumerate(outputs):
                    _write_one(writer, batch, i, out, metadata, overlay_dir if overlay else None, overlay_alpha)
                    predicted.append(batch["image_ids"][i])
            bar.update(len(bad) + (len(batch["image_ids"]) if batch is not None else 0))
    finally:
        bar.close()
        # also after an error or Ctrl-C, so what was predicted is listed in the JSON
        writer.write_json()
        _write_failed(out_dir, failed)
    seconds = time.perf_counter() - start
    logger.info("predicted %d image(s), skipped %d existing, %d failed; results in %s",
                len(predicted), len(skipped), len(failed), out_dir)
    if failed:
        logger.warning("%d input(s) could not be read; listed in %s", len(failed), out_dir / "failed.txt")
    return {"output_dir": str(out_dir), "json": str(writer.json_path), "num_inputs": len(paths),
            "predicted": predicted, "skipped": skipped,
            "failed": [dataclasses.asdict(f) for f in failed], "seconds": seconds,
            "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}


def _plan(paths: list[Path], stems: list[str], writer: PanopticPredictionWriter,
          overlay_dir: Path | None, overwrite: bool) -> tuple[list[int], list[str]]:
    """Indices of inputs to predict and stems skipped because their outputs exist. Skipped images
    keep their entries of an existing JSON in ``writer``, so the new JSON still lists them."""
    if overwrite:
        return list(range(len(paths))), []
    previous: dict[Any, tuple[dict | None, dict]] = {}
    if writer.json_path.is_file():
        data = load_json(writer.json_path)
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{writer.json_path} exists but is not a COCO-panoptic JSON; move it away "
                             f"or set predict.overwrite=true")
        images = {img["id"]: img for img in data.get("images", [])}
        previous = {ann["image_id"]: (images.get(ann["image_id"]), ann) for ann in data["annotations"]}
    todo, skipped = [], []
    for i, stem in enumerate(stems):
        outputs = [writer.png_dir / f"{stem}.png"] + ([overlay_dir / f"{stem}.png"] if overlay_dir else [])
        existing = [p for p in outputs if p.exists()]
        if not existing:
            todo.append(i)
            continue
        skipped.append(stem)
        if stem in previous:
            image, ann = previous[stem]
            writer.annotations.append(ann)
            if image is not None:
                writer.images.append(image)
            logger.info("skipped %s: outputs exist (predict.overwrite=true redoes them)", paths[i])
        else:
            logger.warning("skipped %s: %s exists but %s has no entry for it (an interrupted run?); "
                           "predict.overwrite=true redoes it", paths[i], existing[0], writer.json_path)
    return todo, skipped


def _write_one(writer: PanopticPredictionWriter, batch: dict, i: int, out: dict, metadata: DatasetMetadata,
               overlay_dir: Path | None, alpha: float) -> None:
    """PNG + JSON entry (with thing scores) + overlay of image ``i`` of ``batch``."""
    stem = batch["image_ids"][i]
    id_map_t, model_segments = out["panoptic"]
    id_map = id_map_t.cpu().numpy()
    segments = model_segments_to_dataset(model_segments, metadata)
    ann = writer.add(stem, stem + Path(batch["paths"][i]).suffix, id_map, segments)
    scores = {s["id"]: s["score"] for s in segments if "score" in s}
    for info in ann["segments_info"]:
        if info["id"] in scores:
            info["score"] = scores[info["id"]]
    writer.images[-1]["path"] = batch["paths"][i]
    if overlay_dir is not None:
        image = batch["orig_images"][i]
        vis = panoptic_overlay(image, id_map, segments, metadata, alpha=alpha)
        _save_png_atomic(overlay_dir / f"{stem}.png", vis)


def _save_png_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_failed(out_dir: Path, failed: list[FailedImage]) -> None:
    """failed.json (``{"failed": [{"path", "error"}]}``) and failed.txt (``path<TAB>error`` lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "failed.json", {"failed": [dataclasses.asdict(f) for f in failed]})
    tmp = out_dir / f".failed.txt.tmp{os.getpid()}"
    tmp.write_text("".join(f"{f.path}\t{f.error}\n" for f in failed))
    os.replace(tmp, out_dir / "failed.txt")
