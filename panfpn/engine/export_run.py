"""``export_from_config(cfg) -> dict``: the job behind tools/export.py.

``export.scope=pipeline`` (the default) exports the whole pipeline as one ONNX graph and/or one .pt2
(:mod:`panfpn.engine.export_pipeline`, docs/deployment.md). ``export.scope=network``: exports the network part of the model (backbone, semantic head, RPN head; see
panfpn/modeling/panoptic_fpn/export.py for the cut) to ``<stem>.pt2`` (``torch.export``) and/or ``<stem>.onnx``,
checks each against the eager network on a random input of another size, and writes
``<stem>.json`` describing the inputs, outputs and the measured differences. The eager remainder
(proposals, RoI heads, merge) is rebuilt from the same config and weights at run time:
``run_exported(network, build_inference_model(cfg).model.eval(), batch)``, which uses that model's
own preprocessing and postprocessor (``model.network`` is what is exported). The model
is the one the checkpoint records (see :mod:`panfpn.engine.inference_model`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.dist import resolve_device
from panfpn.engine.config import validate_config
from panfpn.engine.config.unread import refuse_unread_overrides
from panfpn.engine.config.schema import ExportOptions  # the export section's declaration
from panfpn.engine.job_setup import setup_logging, start_job_logging
from panfpn.modeling.panoptic_fpn import export as ex
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.export_pipeline import (export_pipeline_from_config, output_file, output_stem,
                                            warn_unused_options)
from panfpn.engine.output_folder import check_writable_folder
from panfpn.engine.stop_messages import export_stopped
from panfpn.utils.errors import refuse_several_processes
from panfpn.utils.stop_signals import describe_outputs

logger = logging.getLogger("panfpn")

def export_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Export the model of ``cfg.weights`` (the checkpoint's recorded model when it has one, else
    ``cfg.model``; ``overrides`` as in :func:`~panfpn.engine.inference_model.build_inference_model`);
    returns ``{"files": {...}, "max_abs_diff": {format: {output name: float}}}`` and writes
    ``<stem>.json`` with the same."""
    refuse_several_processes("export")
    start_job_logging()  # the no-weights warning below: the tool's format, stderr and log.txt
    validate_config(cfg)
    refuse_unread_overrides("export", overrides, cfg)  # e.g. predict.* typed to tools/export.py
    opts = ExportOptions.from_config(cfg)
    if not cfg.weights:
        logger.warning("no weights given: exporting a randomly initialised model (set weights=path/to/model.pth)")
    stem = output_stem(opts.output, cfg.output_dir)
    check_writable_folder(stem.parent, "export.output")  # a file, read-only: a message before the export
    describe_outputs(export_stopped(stem, opts.format))  # a stop signal's message
    setup_logging(Path(cfg.output_dir))
    warn_unused_options(opts, overrides)
    if opts.scope == "pipeline":
        return export_pipeline_from_config(cfg, opts, stem, overrides)
    device = resolve_device(cfg.device)
    model = build_inference_model(cfg, overrides).model.to(device).eval()
    network = model.network

    files: dict[str, str] = {}
    runners: dict[str, Any] = {}
    if opts.format in ("torch_export", "both"):
        program = ex.export_program(network, height=opts.height, width=opts.width, dynamic=opts.dynamic)
        files["torch_export"] = str(ex.save_program(program, output_file(stem, ".pt2")))
        # verify what a user loads: the saved file, not the program still in memory
        runners["torch_export"] = torch.export.load(files["torch_export"]) if opts.verify else None
        logger.info("wrote %s", files["torch_export"])
    if opts.format in ("onnx", "both"):
        path = ex.export_onnx(network, output_file(stem, ".onnx"), height=opts.height, width=opts.width,
                              dynamic=opts.dynamic, opset=opts.opset)
        files["onnx"] = str(path)
        runners["onnx"] = _onnx_session(path) if opts.verify else None
        logger.info("wrote %s", path)

    diffs = _verify(network, runners, opts, device) if opts.verify else {}
    summary = {
        "files": files,
        "max_abs_diff": diffs,
        "input": {"name": ex.INPUT_NAME, "shape": ["batch", 3, "height", "width"], "dtype": "float32",
                  "trace_size": [opts.height, opts.width], "dynamic": opts.dynamic,
                  "min_size": ex.MIN_SIZE, "size_divisibility": ex.SIZE_DIVISIBILITY,
                  "normalisation": {"pixel_mean": model.pixel_mean.flatten().tolist(),
                                    "pixel_std": model.pixel_std.flatten().tolist(),
                                    "channels": "RGB, 0..255; padding set to 0 after normalising"}},
        "outputs": list(ex.output_names(network)),
        "weights": str(cfg.weights) if cfg.weights else None,
        "opset": opts.opset if "onnx" in files else None,
    }
    write_json_atomic(output_file(stem, ".json"), summary)
    return summary


def _onnx_session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed: the ONNX model is not verified")
        return None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _verify(network: ex.PanopticNetwork, runners: dict[str, Any], opts: ExportOptions,
            device: torch.device) -> dict[str, dict[str, float]]:
    """Max abs difference per output against the eager network, on another size when dynamic."""
    h, w = opts.height, opts.width
    if opts.dynamic:  # a size the graph was not traced at, still within the limits
        step = ex.SIZE_DIVISIBILITY
        h = h + step if h + step <= ex.MAX_SIZE else h - step
        w = w - step if w - step >= ex.MIN_SIZE else w + step
    # Batch 1 when dynamic: traced with 2, so this checks the dynamic batch too.
    x = ex.example_input(h, w, batch_size=1, device=device)
    diffs = {}
    with torch.no_grad():
        want = network(x)
        scale = max(float(t.abs().max()) for t in want)
        for name, runner in runners.items():
            if runner is None:
                continue
            diffs[name] = ex.max_abs_diffs(ex.as_network(runner)(x), want, ex.output_names(network))
            logger.info("%s vs eager on %dx%d: max abs diff %.2e (largest output magnitude %.2e)",
                        name, h, w, max(diffs[name].values()), scale)
    return diffs
