"""``predict_from_config(cfg) -> dict``: the job behind tools/predict.py.

Runs a model on image files (a file, a folder or a glob) and writes, into the output folder::

    panoptic/<stem>.png     COCO-panoptic id PNG (id = R + 256 G + 256^2 B)
    panoptic.json           one COCO-panoptic JSON for the run: images, annotations, categories
    overlays/<stem>.jpg     the image with coloured segments, outlines and labels (or .png)
    semantic/<stem>.png     with predict.semantic=true: semantic labels as dataset category ids
    cityscapes_instances/   with predict.cityscapes_instances=true: cityscapesScripts' instance-level
                            files, <city>_<seq>_<frame>_pred.txt + masks/ (the model's instances)
    failed.json, failed.txt inputs that were skipped because they could not be read, and why

``<stem>`` is unique per input (:func:`output_stems`); the JSON's ``image_id`` follows
``predict.image_id`` (:func:`panfpn.data.image_ids.image_ids`), e.g. createPanopticImgs' ``<city>_<seq>_<frame>``.

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
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import FailedImage, ImageFileDataset, list_image_files, output_stems
from panfpn.data.image_ids import image_ids
from panfpn.data.metadata import DatasetMetadata
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, section_values, validate_config
from panfpn.engine.config.unread import refuse_unread_overrides
from panfpn.engine.config.schema import PredictOptions  # the predict section's declaration
from panfpn.engine.progress import bar_enabled
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.job_setup import fit_threads_to_cpus, setup_logging, start_job_logging
from panfpn.evaluation.cityscapes_instance_folder import (INSTANCES_DIR, cityscapes_instance_classes,
                                                          cityscapes_instance_ids, earlier_instance_files)
from panfpn.evaluation.prediction_folder import (OVERLAY_FORMATS, JsonState, PredictionTargets, WriteQueue,
                                                 check_output_json, log_summary, plan_outputs, prepare_targets,
                                                 without_own_outputs, write_failed, write_one)
from panfpn.evaluation.label_mapping import model_segments_to_dataset
from panfpn.modeling.panoptic_fpn.postprocess import box_instance_masks

from panfpn.engine.output_folder import check_writable_folder
from panfpn.engine.predict_onnx import check_backend_weights, predict_onnx
from panfpn.data.loader import ignore_stop_signals
from panfpn.engine.stop_messages import predict_stopped
from panfpn.utils.errors import refuse_several_processes
from panfpn.utils.stop_signals import describe_outputs

logger = logging.getLogger("panfpn")



def predict_options(cfg: DictConfig) -> PredictOptions:
    """``cfg.predict`` as :class:`PredictOptions`, checked by the config table (unknown keys with a
    did-you-mean, types, ranges, choices); ``predict.input`` must be set."""
    opts = PredictOptions(**section_values(cfg, "predict"))
    if not opts.input:
        raise ConfigError("config key 'predict.input' must name an image file, a folder or a glob "
                          "(predict.input=path/to/images)")
    return opts


def predict_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict ``cfg.weights`` on ``cfg.predict.input``; model, labels and test transform come from
    the checkpoint's record when it has one, else from the config (``cfg.data.val.transforms``);
    see :func:`panfpn.engine.inference_model.build_inference_model` (``overrides`` as there).

    Returns the summary of :func:`predict_images`.
    """
    refuse_several_processes("predict")
    start_job_logging()  # what the checks below log: the tool's format, stderr and log.txt
    validate_config(cfg)
    refuse_unread_overrides("predict", overrides, cfg)  # e.g. eval.batch_size: predict reads predict.batch_size
    opts = predict_options(cfg)
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to predict with "
                          "(weights=path/to/model.pth)")
    check_backend_weights(str(cfg.weights), opts.backend)  # an exported .onnx with the torch backend
    device = du.init_distributed(cfg.device)
    out_dir = Path(opts.output_dir if opts.output_dir else cfg.output_dir)
    check_writable_folder(out_dir, "predict.output_dir")  # a file, read-only: a message before the model runs
    check_output_json(out_dir, bool(opts.overwrite))  # a dataset's ground truth there: refused before anything
    setup_logging(out_dir)
    fit_threads_to_cpus()
    paths = list_image_files(opts.input if isinstance(opts.input, str) else list(opts.input),
                             recursive=bool(opts.recursive))
    paths = without_own_outputs(paths, out_dir)  # an output folder inside the input is not read back
    if opts.backend == "onnxruntime":  # the exported pipeline: panfpn/engine/predict_onnx.py
        return predict_onnx(str(cfg.weights), paths, out_dir, opts, str(cfg.device), overrides)
    if opts.cityscapes_instances:  # inputs and labels checked before the model is built
        cityscapes_instance_ids(paths)
    built = build_inference_model(cfg, overrides, check_metadata=cityscapes_instance_classes
                                  if opts.cityscapes_instances else None)
    metadata, transforms = built.metadata, built.transform()
    model = built.model.to(device)
    logger.info("predicting %d input file(s) into %s (test transform: %s)", len(paths), out_dir, transforms)
    return predict_images(model, paths, metadata, out_dir, transforms=transforms, device=device,
                          batch_size=int(opts.batch_size), num_workers=int(opts.num_workers),
                          overwrite=bool(opts.overwrite), overlay=bool(opts.overlay),
                          overlay_alpha=float(opts.overlay_alpha), overlay_format=str(opts.overlay_format),
                          write_threads=int(opts.write_threads), image_id=str(opts.image_id),
                          json_every=int(opts.json_every), semantic=bool(opts.semantic),
                          cityscapes_instances=bool(opts.cityscapes_instances),
                          progress=bar_enabled(opts.progress_bar))


def nothing_predicted(summary: dict[str, Any]) -> str | None:
    """The message tools/predict.py ends with (exit status 1) when every input failed to be read:
    nothing predicted, nothing done earlier (as tools/merge.py's 'no image merged'); else None."""
    if summary["predicted"] or summary["skipped"] or not summary["failed"]:
        return None
    return (f"no image predicted: every input ({len(summary['failed'])}) could not be read, listed in "
            f"{Path(summary['output_dir']) / 'failed.txt'}")


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
    batch_size: int = 1, num_workers: int = 0, overwrite: bool = False, overlay: bool = True,
    overlay_alpha: float = 0.55, overlay_format: str = "jpg", write_threads: int = 2, progress: bool = True,
    image_id: str = "auto", json_every: int = 50, semantic: bool = False, cityscapes_instances: bool = False,
) -> dict[str, Any]:
    """Run ``model`` (eval output of docs/interfaces.md section 3) on image files; write results.

    ``device`` is the model's (batches are pinned for it when it is a GPU). Encoding PNGs and
    drawing overlays runs in ``write_threads`` threads (0: inline) while the
    model works on the next batch; the JSON lists the images in input order all the same.
    ``image_id`` is the rule of :func:`panfpn.data.image_ids.image_ids`; the JSON is rewritten every ``json_every``
    finished images; ``semantic`` also writes semantic label PNGs; ``cityscapes_instances`` also
    writes cityscapesScripts' instance-level files of the model's instances (Cityscapes inputs and
    labels only: :func:`cityscapes_instance_ids`, :func:`cityscapes_instance_classes`).

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
    cs_ids = dict(zip(stems, cityscapes_instance_ids(paths))) if cityscapes_instances else None
    targets = prepare_targets(out_dir, metadata, overlay=overlay, overlay_format=overlay_format,
                               overlay_alpha=float(overlay_alpha), semantic=semantic, cityscapes_ids=cs_ids)
    todo, skipped, kept = plan_outputs(paths, stems, ids, targets, overwrite)
    if targets.instances is not None:  # an image redone loses its earlier instance files first
        removed = targets.instances.remove_earlier([stems[i] for i in todo])
        if removed:
            logger.info("removed %d instance file(s) of images now redone from %s", removed,
                        targets.instances.out_dir)
    elif stale := earlier_instance_files(out_dir / INSTANCES_DIR, [paths[i] for i in todo]):
        logger.warning("%s holds the instance files of %d image(s) redone now without predict.cityscapes_instances "
                       "(%s, ...): an earlier run's, not this run's predictions; set predict.cityscapes_instances=true "
                       "to redo them too, or remove them before submitting the folder", out_dir / INSTANCES_DIR,
                       len(stale), stale[0].name)
    state = JsonState(targets.writer, kept, stems, paths, max(1, int(json_every)))
    describe_outputs(predict_stopped(targets.writer.json_path, len(kept), len(todo)))  # a stop signal's message
    dataset = ImageFileDataset([paths[i] for i in todo], transforms=transforms, keep_original=overlay,
                               stems=[stems[i] for i in todo])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_predict,
                        pin_memory=torch.device(device).type == "cuda", worker_init_fn=ignore_stop_signals)
    model.eval()
    start = time.perf_counter()
    predicted, failed = _predict_all(model, loader, targets, ids, state, write_threads=write_threads,
                                     progress=progress)
    return _summary(targets, len(paths), predicted, skipped, failed, time.perf_counter() - start)


def _predict_all(model: torch.nn.Module, loader: DataLoader, targets: PredictionTargets, ids: dict[str, Any],
                 state: JsonState, *, write_threads: int, progress: bool) -> tuple[list[str], list[FailedImage]]:
    """Predict every batch of ``loader`` and write its files (``write_threads`` threads); the JSON
    and the failure lists are written also after an error or Ctrl-C, so that what was written is
    listed. Returns the predicted stems and the unreadable inputs."""
    predicted: list[str] = []
    failed: list[FailedImage] = []
    queue = WriteQueue(write_threads)
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
            write_failed(targets.writer.out_dir, failed)
    return predicted, failed


def _summary(targets: PredictionTargets, num_inputs: int, predicted: list[str], skipped: list[str],
             failed: list[FailedImage], seconds: float) -> dict[str, Any]:
    """Log the run's counts and return :func:`predict_images`'s result dict."""
    out_dir = targets.writer.out_dir
    log_summary(out_dir, len(predicted), len(skipped), len(failed))
    return {"output_dir": str(out_dir), "json": str(targets.writer.json_path), "num_inputs": num_inputs,
            "predicted": predicted, "skipped": skipped,
            "failed": [dataclasses.asdict(f) for f in failed], "seconds": seconds,
            "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}


def _predict_batch(model: torch.nn.Module, batch: dict | None, targets: PredictionTargets, ids: dict[str, Any],
                   metadata: DatasetMetadata, queue: WriteQueue) -> list[str]:
    """Run the model on one batch and queue the writes of its images; returns their stems."""
    if batch is None:
        return []
    with box_instance_masks():  # full-size masks are made one at a time, when written
        outputs = model(batch)
    stems = []
    for i, out in enumerate(outputs):
        stem = batch["image_ids"][i]
        id_map, segments = out["panoptic"]
        sem = out["sem_seg"].cpu().numpy() if targets.semantic is not None else None
        instances = _instances(out) if targets.instances is not None else None
        queue.submit(functools.partial(write_one, targets, stem, ids[stem], batch["paths"][i],
                                       id_map.cpu().numpy(), model_segments_to_dataset(segments, metadata),
                                       batch["orig_images"][i], sem, instances))
        stems.append(stem)
    return stems


def _instances(output: dict[str, Any]) -> tuple[list[int], list[float], Any]:
    """(contiguous thing labels, scores, masks) of one image's ``instances``, the Mask R-CNN /
    Mask2Former instances before the panoptic merge that tools/eval.py's cityscapes_ap scores
    (dense masks moved to the CPU; ``BoxMasks`` stay in their boxes); a ConfigError naming
    ``model`` for a model whose outputs have none."""
    instances = output.get("instances")
    if not isinstance(instances, dict) or not {"labels", "scores", "masks"} <= set(instances):
        raise ConfigError("config key 'predict.cityscapes_instances': the model (config key 'model') gives no "
                          "'instances' with labels, scores and masks (docs/interfaces.md section 3) to write; "
                          "set predict.cityscapes_instances=false")
    masks = instances["masks"]
    return (instances["labels"].tolist(), instances["scores"].tolist(),
            masks.cpu() if isinstance(masks, torch.Tensor) else masks)
