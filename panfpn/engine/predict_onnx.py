"""``predict.backend=onnxruntime`` of tools/predict.py: the exported pipeline (``weights=model.onnx``)
run by :mod:`panfpn.deploy.onnx_runner`, the same code a user without panfpn runs, on the inputs
as the torch backend reads them (file filter, decoder, output names), so both write the same files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from panfpn.data.image_files import FailedImage, ImageFileDataset, ImageReadError
from panfpn.data.metadata import DatasetMetadata
from panfpn.deploy import onnx_runner
from panfpn.engine.config import ConfigError
from panfpn.engine.config.typed_overrides import as_typed
from panfpn.evaluation.prediction_folder import log_summary, plan_outputs, prepare_targets, write_failed
from panfpn.engine.stop_messages import predict_stopped
from panfpn.utils.stop_signals import describe_outputs

logger = logging.getLogger("panfpn")


def read_like_torch_backend(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of an input as the torch backend reads it (its file filter and decoder:
    16-bit and float images scaled, not clipped); ImageReadError with the torch backend's reason."""
    sample = ImageFileDataset([path], keep_original=False, stems=[path.stem])[0]
    if isinstance(sample, FailedImage):
        raise ImageReadError.for_file(path, sample.error)
    return sample["image"].permute(1, 2, 0).numpy()


def onnx_providers(device: str) -> list[Any]:
    """onnxruntime providers for config key ``device``: ``auto`` takes the GPU when torch and
    onnxruntime (onnxruntime-gpu's CUDA provider) both have one; ``cuda[:N]`` that onnxruntime
    cannot use is an error, not a silent CPU run."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if str(device) == "auto":
        device = "cuda" if has_cuda and torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return ["CPUExecutionProvider"]
    if not has_cuda:
        raise ConfigError(f"config key 'device' is {str(device)!r} but this onnxruntime has no CUDA provider "
                          "(pip install onnxruntime-gpu, or device=cpu)")
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def refuse_exported_settings(overrides: Sequence[str] | None) -> None:
    """ConfigError for explicit overrides (``None``: hydra's command line) of what the graph fixed at
    export: the model's keys (thresholds, detections per image, ...) and the test resize."""
    parsed = _typed_overrides(overrides)
    fixed = [as_typed(o.input_line) for o in parsed if o.key_or_group.split(".")[0] == "model"
             or o.key_or_group.startswith("data.val.transforms")]
    if fixed:
        raise ConfigError(f"predict.backend=onnxruntime runs the exported graph, whose model and test resize "
                          f"were fixed by tools/export.py: {', '.join(fixed)} would have no effect; export "
                          "again with it, or use predict.backend=torch")
    unused = [o.input_line for o in parsed if o.key_or_group in _SPEED_ONLY_KEYS]
    if unused:  # they change no result, only how the torch backend batches and writes
        logger.warning("predict.backend=onnxruntime runs one image at a time in this process and writes "
                       "panoptic.json at the end: %s %s no effect (the results are the same)", ", ".join(unused),
                       "has" if len(unused) == 1 else "have")


def _typed_overrides(overrides: Sequence[str] | None) -> list:
    """hydra's parse of ``overrides`` (``None``: hydra's command line)."""
    from panfpn.engine.model_spec import command_line_overrides, parse_overrides

    return parse_overrides(command_line_overrides() if overrides is None else list(overrides))


# predict keys of the torch backend's batching, workers and writing that the onnxruntime backend does not use
_SPEED_ONLY_KEYS = frozenset(f"predict.{k}" for k in ("batch_size", "num_workers", "write_threads", "json_every",
                                                      "overlay_alpha", "overlay_format", "progress_bar"))


def check_backend_weights(weights: str, backend: str) -> None:
    """ConfigError for an exported file given to the torch backend, which reads checkpoints only:
    the message names ``predict.backend=onnxruntime`` (the generic one lists checkpoint formats)."""
    if backend == "torch" and weights.endswith((".onnx", ".pt2")):
        runs = ("runs with predict.backend=onnxruntime" if weights.endswith(".onnx") else
                "is run with torch.export.load (docs/deployment.md); predict.backend=onnxruntime runs the .onnx")
        raise ConfigError(f"config key 'weights': {weights} is an exported pipeline, which {runs}; "
                          "predict.backend=torch (the default) needs the checkpoint (.pth)")


def open_exported(weights: str, device: str) -> tuple[Any, dict[str, Any]]:
    """The onnxruntime session of ``weights`` and its export metadata; ConfigError naming config key
    ``weights`` for a missing file, one onnxruntime cannot load, or an ONNX file of another kind.
    Logs the settings the graph fixed at export (the config's model keys do not apply)."""
    try:
        session = onnx_runner.open_session(weights, providers=onnx_providers(device))
        meta = onnx_runner.model_metadata(session)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        named = str(e) if str(e).startswith(weights) else f"{weights}: {e}"
        raise ConfigError(f"config key 'weights': {named}") from None
    fixed = {k: meta.get(k) for k in ("detection", "merge", "mask_classification", "resize", "resize_pass_order") if meta.get(k) is not None}
    logger.info("%s: settings fixed at export (the config's model.* keys are not used): %s", weights,
                ", ".join(f"{k} {v}" for k, v in fixed.items()))
    return session, meta


def predict_onnx(weights: str, paths: Sequence[Path], out_dir: Path, opts: Any,
                 device: str = "cpu", overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict ``paths`` with the ONNX pipeline ``weights`` into ``out_dir`` on config key ``device``
    (:func:`onnx_providers`): panoptic PNGs + JSON and failed.txt as the torch backend, the inputs
    read as there; no overlays, semantic PNGs or instance files; ``overrides`` as :func:`refuse_exported_settings`.
    Returns the summary of ``predict_images``."""
    from panfpn.data.image_files import output_stems
    from panfpn.data.image_ids import image_ids

    if not str(weights).endswith(".onnx"):
        raise ConfigError(f"predict.backend=onnxruntime runs an exported pipeline: weights must be a .onnx "
                          f"file written by tools/export.py, got {weights!r}")
    refuse_exported_settings(overrides)
    if opts.semantic:
        raise ConfigError("predict.backend=onnxruntime writes no semantic PNGs: set predict.semantic=false "
                          "or use predict.backend=torch")
    if opts.cityscapes_instances:  # the graph's instance outputs are boxes, scores, labels: no masks
        raise ConfigError("config key 'predict.cityscapes_instances': predict.backend=onnxruntime cannot write "
                          "cityscapesScripts' instance files: the exported pipeline outputs the instances' boxes, "
                          "scores and labels but not their masks; use predict.backend=torch with the checkpoint "
                          "(.pth), or set predict.cityscapes_instances=false")
    if opts.overlay:  # the default: said, a warning only where the command line asked for overlays
        asked = any(o.key_or_group == "predict.overlay" for o in _typed_overrides(overrides))
        (logger.warning if asked else logger.info)(
            "predict.backend=onnxruntime writes the panoptic PNGs and JSON only (no overlays%s)",
            ": predict.overlay is ignored" if asked else "")
    stems = output_stems(list(paths))
    ids = image_ids(list(paths), stems, opts.image_id)
    session, meta = open_exported(weights, device)
    metadata = DatasetMetadata.from_coco_categories(meta["categories"])
    targets = prepare_targets(out_dir, metadata, overlay=False, overlay_format="png", overlay_alpha=0.0,
                              semantic=False)
    # as the torch backend: done images skipped (predict.overwrite), other images' entries kept
    todo, skipped, kept = plan_outputs(list(paths), stems, dict(zip(stems, ids)), targets, bool(opts.overwrite))
    failed: list[tuple[str, str]] = []
    describe_outputs(predict_stopped(targets.writer.json_path, len(kept), len(todo)))  # a stop signal's message
    start = time.perf_counter()
    try:
        json_path = onnx_runner.predict_files(session, [paths[i] for i in todo], out_dir,
                                              stems=[stems[i] for i in todo], image_ids=[ids[i] for i in todo],
                                              failed=failed, read=read_like_torch_backend, previous=kept)
    finally:
        write_failed(out_dir, [FailedImage(p, e) for p, e in failed])
    seconds = time.perf_counter() - start
    bad = {p for p, _ in failed}
    predicted = [stems[i] for i in todo if str(paths[i]) not in bad]
    for path, error in failed:
        logger.warning("skipped %s: %s", path, error)
    log_summary(out_dir, len(predicted), len(skipped), len(failed), backend="onnxruntime")
    return {"output_dir": str(out_dir), "json": str(json_path), "num_inputs": len(paths),
            "predicted": predicted, "skipped": skipped, "failed": [{"path": p, "error": e} for p, e in failed],
            "seconds": seconds, "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}
