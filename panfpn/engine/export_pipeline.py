"""``export.scope=pipeline`` of tools/export.py: the whole pipeline (image in, panoptic result out)
as one ONNX file and/or one ``torch.export`` program (``.pt2``), checked against the eager pipeline,
with a JSON summary beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from panfpn.deploy.export import build_pipeline, example_image, export_pipeline_onnx, pipeline_metadata
from panfpn.deploy.mask2former_pipeline import Mask2FormerPipeline
from panfpn.deploy.pipeline import INPUT_NAME, OUTPUT_NAMES, PanopticPipeline
from panfpn.deploy.torch_export import export_pipeline_program
from panfpn.engine.config.typed_overrides import as_typed
from panfpn.engine.inference_model import build_inference_model
from panfpn.modeling.mask2former import Mask2Former
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.errors import ConfigError

logger = logging.getLogger("panfpn")

# Extensions the export writes: an ``export.output`` ending in one is the stem without it.
OUTPUT_EXTENSIONS = (".onnx", ".pt2", ".json")


def output_stem(output: str | None, run_dir: Any) -> Path:
    """The path stem of ``export.output``: ``<run dir>/model`` when unset, ``<folder>/model`` for an
    existing folder or a path ending in a separator, the path less a written extension
    (``model.onnx`` -> ``model``), else the path as given (``panfpn.v2`` stays whole)."""
    if not output:
        return Path(run_dir) / "model"
    path = Path(output)
    if output.endswith(("/", "\\")) or path.is_dir():
        return path / "model"
    return path.with_suffix("") if path.suffix in OUTPUT_EXTENSIONS else path


def output_file(stem: Path, extension: str) -> Path:
    """``<stem><extension>``: appended, not ``with_suffix`` (which would drop a dotted stem's last part)."""
    return stem.with_name(stem.name + extension)


# Sizes the written file is checked at (other than the traced one): a landscape and a portrait image.
VERIFY_SIZES = ((96, 200), (300, 180))
VERIFY_MIN_AGREEMENT = 0.999  # share of equal id-map pixels below which the check is a WARNING


def check_pipeline_model(model: Any, weights: Any) -> None:
    """The pipeline exists for Panoptic FPN (proposals, RoI heads, merge) and Mask2Former (mask
    classification): refuse another model with a :class:`ConfigError` that names ``export.scope=network``,
    before writing anything."""
    if not isinstance(model, (PanopticFPN, Mask2Former)):
        source = f"the model of {weights}" if weights else "the configured model"
        raise ConfigError(f"config key 'export.scope': 'pipeline' (the default) exports Panoptic FPN and "
                          f"Mask2Former models, and {source} is a {type(model).__name__}: export its network "
                          "with export.scope=network (docs/deployment.md)")


def pipeline_of(model: PanopticFPN | Mask2Former, built: Any, merge: str) -> PanopticPipeline | Mask2FormerPipeline:
    """The model's pipeline; ``export.merge``: ``model`` (its own rules or thresholds), or for Panoptic
    FPN the ``detectron2`` / ``textbook`` merge rules."""
    if merge == "model":
        return build_pipeline(model, built.metadata, built.transform())
    if isinstance(model, Mask2Former):
        raise ConfigError(f"config key 'export.merge': {merge!r} picks Panoptic FPN merge rules; a Mask2Former "
                          "model has no merge (leave export.merge=model; its panoptic thresholds are "
                          "model.inference.object_mask_threshold / overlap_threshold)")
    return build_pipeline(model, built.metadata, built.transform(), merge=getattr(MergeThresholds, merge)())


def refuse_unused_merge_overrides(merge: str, overrides: Sequence[str] | None) -> None:
    """ConfigError for explicit ``model.merge.*`` overrides (``None``: hydra's command line) when
    ``export.merge`` picks fixed rules (``detectron2`` / ``textbook``), which replace the model's:
    the graph would silently bake other thresholds than the ones asked for."""
    from panfpn.engine.model_spec import command_line_overrides, parse_overrides

    if merge == "model":
        return
    given = command_line_overrides() if overrides is None else list(overrides)
    unused = [as_typed(o.input_line) for o in parse_overrides(given)
              if o.key_or_group.startswith("model.merge.")]
    if unused:
        raise ConfigError(f"config key 'export.merge': {merge!r} bakes MergeThresholds.{merge}() into the graph, "
                          f"so {', '.join(unused)} would have no effect; set export.merge=model to export "
                          "the model's merge rules with them")


def warn_unused_options(opts: Any, overrides: Sequence[str] | None = None) -> None:
    """Say which set ``export.*`` keys the chosen scope does not use (nothing else would tell);
    ``overrides``: the user's (``None``: hydra's command line), for keys typed at their default value."""
    from panfpn.engine.model_spec import command_line_overrides, parse_overrides

    typed = [o.input_line for o in parse_overrides(command_line_overrides() if overrides is None else overrides)
             if o.key_or_group in ("export.height", "export.width")]
    if opts.scope == "pipeline" and not opts.dynamic:  # height/width/dynamic shape the network's graph only
        logger.warning("export.dynamic=false is not used by export.scope=pipeline (nor export.height/width): "
                       "the pipeline graph always takes any image size (export.scope=network traces a fixed one)")
    elif opts.scope == "pipeline" and typed:
        logger.warning("%s %s not used by export.scope=pipeline: the pipeline graph always takes any image size "
                       "(export.scope=network traces at that size)", " and ".join(typed),
                       "is" if len(typed) == 1 else "are")
    if opts.scope == "network" and opts.merge != "model":
        logger.warning("export.merge=%s is not used by export.scope=network: the graph ends before the merge, "
                       "which runs eagerly with the model's own rules (model.merge)", opts.merge)


def export_pipeline_from_config(cfg: DictConfig, opts: Any, stem: Path,
                                overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``<stem>.onnx`` and/or ``<stem>.pt2`` (the pipeline, per ``export.format``) and
    ``<stem>.json``; returns the JSON's content."""
    refuse_unused_merge_overrides(str(opts.merge), overrides)
    built = build_inference_model(cfg, overrides)
    check_pipeline_model(built.model, cfg.weights)
    model = built.model.cpu().eval()  # traced on the CPU; the graph runs on any onnxruntime provider
    pipeline = pipeline_of(model, built, str(opts.merge))
    files = {}
    if opts.format in ("onnx", "both"):
        files["onnx"] = str(export_pipeline_onnx(pipeline, output_file(stem, ".onnx"), metadata=built.metadata,
                                                 opset=opts.opset))
    if opts.format in ("torch_export", "both"):
        files["torch_export"] = str(export_pipeline_program(pipeline, output_file(stem, ".pt2")))
    logger.info("wrote %s (whole %s pipeline)", ", ".join(files.values()), type(model).__name__)
    summary = {"scope": "pipeline", "files": files,
               "input": {"name": INPUT_NAME, "shape": ["height", "width", 3], "dtype": "uint8 RGB"},
               "outputs": list(OUTPUT_NAMES), "opset": opts.opset,
               "weights": str(cfg.weights) if cfg.weights else None,
               "pipeline": pipeline_metadata(pipeline, built.metadata)}
    if opts.verify:
        summary["verify"] = verify_files(pipeline, files)
    write_json_atomic(output_file(stem, ".json"), summary)
    return summary


def _runners(files: dict[str, str]) -> dict[str, Any]:
    """Format -> a function image -> outputs (numpy), loading each written file as a user does."""
    runners: dict[str, Any] = {}
    if "onnx" in files:
        try:
            import onnxruntime as ort
        except ImportError:
            logger.warning("onnxruntime is not installed: the ONNX pipeline is not verified")
        else:
            session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
            runners["onnx"] = lambda image: session.run(None, {INPUT_NAME: image.numpy()})
    if "torch_export" in files:
        program = torch.export.load(files["torch_export"]).module()
        runners["torch_export"] = lambda image: [t.numpy() for t in program(image)]
    return runners


@torch.no_grad()
def verify_files(pipeline: PanopticPipeline | Mask2FormerPipeline,
                 files: dict[str, str]) -> dict[str, Any]:
    """Run the written files and the eager pipeline on random images of :data:`VERIFY_SIZES`: per
    format and size the share of equal id-map pixels and whether the segment lists (ids,
    categories) agree."""
    out: dict[str, Any] = {}
    for name, run in _runners(files).items():
        out[name] = {}
        for h, w in VERIFY_SIZES:
            out[name][f"{h}x{w}"] = _check(pipeline, run, example_image(h, w), name)
    return out


def _check(pipeline: PanopticPipeline | Mask2FormerPipeline, run: Any, image: torch.Tensor,
           name: str) -> dict[str, Any]:
    """One image through the eager pipeline and a written file: equal pixels, equal segments."""
    h, w = image.shape[:2]
    want = dict(zip(OUTPUT_NAMES, (t.numpy() for t in pipeline(image))))
    got = dict(zip(OUTPUT_NAMES, run(image)))
    n = int(want["num_segments"])
    same = int(got["num_segments"]) == n and all(
        np.array_equal(got[k][:n], want[k][:n]) for k in ("segments_id", "segments_category_id"))
    agree = float((got["panoptic"] == want["panoptic"]).mean())
    # a tie flips a pixel now and then (docs/deployment.md, Exactness); more is a written file to distrust
    level = logging.INFO if same and agree >= VERIFY_MIN_AGREEMENT else logging.WARNING
    logger.log(level, "%s vs eager pipeline on %dx%d: %.4f%% equal pixels, segments %s%s", name, h, w, 100 * agree,
               "equal" if same else "DIFFER", "" if level == logging.INFO else
               " (the written file does not reproduce the model: see verify in the export's JSON)")
    return {"pixel_agreement": agree, "same_segments": bool(same)}
