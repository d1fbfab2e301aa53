"""Export the whole pipeline (image in, panoptic result out) as one ONNX graph or one ``torch.export``
program: :class:`~panfpn.deploy.pipeline.PanopticPipeline` for Panoptic FPN,
:class:`~panfpn.deploy.mask2former_pipeline.Mask2FormerPipeline` for Mask2Former (the same outputs).

The ONNX file carries what a runner needs besides the graph, as the metadata entry
:data:`METADATA_KEY` (JSON): the dataset's COCO categories, the test resize and its pass order
(that of the Pillow installed where it was exported), the merge rules, the output names and
limits. ``panfpn/deploy/onnx_runner.py`` reads it (no panfpn or torch needed); docs/deployment.md
describes inputs, outputs and ops.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.transforms import ResizeShortestEdge
from panfpn.deploy.mask2former_pipeline import Mask2FormerPipeline
from panfpn.deploy.onnx_runner import FORMAT, METADATA_KEY, VERSION  # what the runner reads, defined once
from panfpn.deploy.pipeline import INPUT_NAME, OUTPUT_NAMES, PanopticPipeline
from panfpn.modeling.mask2former import Mask2Former
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.utils.atomic import atomic_write_path
from panfpn.utils.errors import ConfigError

DEFAULT_OPSET = 17  # RoiAlign with half-pixel coordinates needs 16, ScatterElements' add 16
MAX_SIDE = 4096  # documented maximum side: the .pt2's memory grows as K x H x W (docs/deployment.md)


def resize_of(transform: Any) -> tuple[int, int] | None:
    """``(short_edge, max_size)`` of a test transform, or None for none; any other transform is a
    :class:`ConfigError` (tools/export.py: a message, exit 2; the graph reproduces only a
    deterministic shortest-edge resize)."""
    if transform is None:
        return None
    if isinstance(transform, ResizeShortestEdge) and len(transform.lengths) == 1:
        return transform.lengths[0], transform.max_size
    raise ConfigError(f"config key 'data.val.transforms': the exported pipeline resizes like ResizeShortestEdge "
                      f"with one length; the test transform is {transform!r} (set data.val.transforms to such a resize)")


def build_pipeline(model: PanopticFPN | Mask2Former, metadata: DatasetMetadata, transform: Any = None, *,
                   merge: MergeThresholds | None = None) -> PanopticPipeline | Mask2FormerPipeline:
    """The pipeline of an eval-mode ``model`` with its dataset's category ids and test resize
    (``merge``: Panoptic FPN's rules; Mask2Former has none, its thresholds are the model's)."""
    sem_ids = [-1 if c is None else int(c) for c in metadata.sem_label_to_category]
    common = {"resize": resize_of(transform), "thing_category_ids": metadata.thing_ids, "sem_category_ids": sem_ids}
    if isinstance(model, Mask2Former):
        if merge is not None:
            raise ValueError("Mask2Former has no merge rules (its panoptic thresholds are model.inference.*)")
        return Mask2FormerPipeline(model, **common)
    return PanopticPipeline(model, merge=merge, **common)


def pipeline_metadata(pipeline: PanopticPipeline | Mask2FormerPipeline, metadata: DatasetMetadata) -> dict[str, Any]:
    """What a runner needs besides the graph (stored in the ONNX file and the export's JSON)."""
    m2f = isinstance(pipeline, Mask2FormerPipeline)
    return {"format": FORMAT, "version": VERSION, "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES),
            "model": "mask2former" if m2f else "panoptic_fpn",
            "resize": list(pipeline.resize) if pipeline.resize else None,
            "resize_pass_order": pipeline.resize_order if pipeline.resize else None,  # the exporting Pillow's
            "max_detections": pipeline.max_detections, "max_side": MAX_SIDE,
            "merge": None if m2f else asdict(pipeline.merge), "stuff_score": -1.0,
            **({"mask_classification": asdict(pipeline.inference)} if m2f else
               {"detection": asdict(pipeline.model.roi_heads.box_head.test)}),  # the box head's, baked in
            "categories": metadata.to_coco_categories()}


def example_image(height: int = 120, width: int = 160) -> torch.Tensor:
    """A random uint8 ``[H, W, 3]`` image to trace with (its size does not matter: H, W stay dynamic)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g)


def export_pipeline_onnx(pipeline: PanopticPipeline | Mask2FormerPipeline, path: str | os.PathLike, *,
                         metadata: DatasetMetadata | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Write the pipeline as one ONNX graph (TorchScript-based exporter; standard ops only), with
    :func:`pipeline_metadata` as the metadata entry :data:`METADATA_KEY` when ``metadata`` is given."""
    if opset < 16:
        raise ValueError(f"the pipeline needs ONNX opset >= 16 (RoiAlign half_pixel), got {opset}")
    axes = {INPUT_NAME: {0: "height", 1: "width"}, "panoptic": {0: "height", 1: "width"},
            "sem_seg": {0: "height", 1: "width"}}

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notes
            torch.onnx.export(pipeline, (example_image(),), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
        if metadata is not None:
            _add_metadata(tmp, pipeline_metadata(pipeline, metadata))

    return atomic_write_path(path, write, suffix=".tmp.onnx")


def _add_metadata(path: Path, data: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)
    onnx.save(model, str(path))
