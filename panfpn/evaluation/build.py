"""``build_evaluators(cfg, metadata, out_dir)``: the evaluators a config asks for, one list for
tools/eval.py and for training-time evaluation.

Always: PQ (``panoptic``), mIoU (``sem_seg``) and the scored image set (``image_set``); COCO AP (``bbox``, ``segm``) with
``eval.compute_ap``; then every entry of ``eval.evaluators``: a built-in name (:data:`NAMED`) or
``{_target_: module.Class, ...}``, a class built with ``metadata=`` and the entry's other keys;
last the overlays (``overlays``). tools/eval.py adds what writes files into ``out_dir``: the
prediction PNGs + JSON (``eval.save_predictions``), the semantic PNGs (``eval.save_semantic``)
and report.html (``eval.report``; every image's overlay in ``report_images/`` with
``eval.report_browse``); with ``eval.save_predictions`` a ``cityscapes_ap`` evaluator also writes
cityscapesScripts' instance-level prediction files into ``predictions/cityscapes_instances``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.cityscapes_ap import CityscapesAP
from panfpn.evaluation.evaluator import Evaluator
from panfpn.evaluation.image_set import ScoredImages
from panfpn.evaluation.evaluators import (COCOAP, Overlays, PanopticPNGWriter, PanopticQuality, ReportCollector,
                                          SemanticPNGWriter, SemanticSegmentation)
from panfpn.utils.errors import ConfigError

# Short names for eval.evaluators (a new metric: its class, one line here, its name in the config).
NAMED = {"pq_by_area": "panfpn.evaluation.pq_by_area.PQByArea",
         "cityscapes_ap": "panfpn.evaluation.cityscapes_ap.CityscapesAP",
         "cityscapes_sem_seg": "panfpn.evaluation.cityscapes_pixel.CityscapesSemSeg"}
CITYSCAPES_INSTANCE_DIR = "cityscapes_instances"  # eval.save_predictions + cityscapes_ap: <run dir>/predictions/<this>
REPORT_WORST_IMAGES = 8  # images with the lowest per-image PQ shown in report.html


def build_evaluators(cfg: DictConfig, metadata: DatasetMetadata, out_dir: str | Path | None = None, *,
                     training: bool = False, context: dict[str, str] | None = None,
                     fill_dir: str | Path | None = None) -> list[Evaluator]:
    """The evaluators of ``cfg`` (module docstring). ``training``: those of training-time
    evaluation (no files; ``train.num_vis_images`` overlays for TensorBoard). ``context``: what the
    run used, shown at the top of report.html. ``fill_dir``: where the prediction folders
    (``predictions/``, ``semantic/``) are written, default ``out_dir`` (tools/eval.py: the hidden
    folder they are renamed into place from, :mod:`panfpn.evaluation.partial_predictions`)."""
    evaluators: list[Evaluator] = [PanopticQuality(metadata), SemanticSegmentation(metadata), ScoredImages()]
    if cfg.eval.compute_ap:
        evaluators.append(COCOAP(metadata))
    evaluators += configured_evaluators(cfg.eval.get("evaluators") or [], metadata)
    if training or out_dir is None:
        return evaluators + [Overlays(cfg.train.num_vis_images if training else 0)]
    out_dir = Path(out_dir)
    fill_dir = out_dir if fill_dir is None else Path(fill_dir)
    if cfg.eval.save_predictions:
        evaluators.append(PanopticPNGWriter(metadata, fill_dir / "predictions"))
        for evaluator in evaluators:  # cityscapes_ap: also the official instance-level prediction files
            if isinstance(evaluator, CityscapesAP) and evaluator.write_dir is None:
                evaluator.write_dir = fill_dir / "predictions" / CITYSCAPES_INSTANCE_DIR
    if cfg.eval.get("save_semantic", False):
        evaluators.append(SemanticPNGWriter(metadata, fill_dir / "semantic"))
    if cfg.eval.get("report", True):
        title = f"Panoptic evaluation: {Path(str(cfg.weights)).name} on {evaluated_split(cfg)}"
        evaluators.append(ReportCollector(metadata, out_dir, k=REPORT_WORST_IMAGES, title=title, context=context,
                                          score_thresh=OmegaConf.select(cfg, "model.merge.score_thresh"),
                                          browse=bool(cfg.eval.get("report_browse", True))))
    return evaluators + [Overlays(cfg.eval.save_overlays, out_dir / "overlays")]


def evaluated_split(cfg: DictConfig) -> str:
    """The data an evaluation scores, as report.html's title names it: the data group and its
    ``data.val`` split (not the label set's name, which for a folder dataset is the train JSON's)."""
    name = OmegaConf.select(cfg, "data.name") or "data.val"
    split = OmegaConf.select(cfg, "data.val.split")
    return f"{name} {split}" if split else str(name)


def evaluated_dataset(cfg: DictConfig) -> str:
    """The evaluated dataset as report.html's context lists it: the data group, and the val JSON
    where the config names one (``data=coco_panoptic_folder``)."""
    name = str(OmegaConf.select(cfg, "data.name") or "data.val")
    json_file = OmegaConf.select(cfg, "data.val.json_file")
    return f"{name} ({json_file})" if json_file else name


def configured_evaluators(entries: Sequence[Any], metadata: DatasetMetadata) -> list[Evaluator]:
    """The evaluators of ``eval.evaluators``: names of :data:`NAMED` or ``{_target_: ...}`` entries."""
    from hydra.utils import get_class, instantiate

    if OmegaConf.is_config(entries):
        entries = OmegaConf.to_container(entries, resolve=True)
    out = []
    for i, entry in enumerate(entries):
        key = f"eval.evaluators[{i}]"
        if isinstance(entry, str):
            if entry not in NAMED:
                raise ConfigError(f"config key '{key}': unknown evaluator {entry!r}; built-in: {sorted(NAMED)}, "
                                  "or give {_target_: module.Class}")
            evaluator = get_class(NAMED[entry])(metadata=metadata)
        elif isinstance(entry, dict) and "_target_" in entry:
            try:
                evaluator = instantiate(entry, metadata=metadata, _convert_="all")
            except Exception as err:  # hydra wraps import and constructor errors alike
                raise ConfigError(f"config key '{key}': cannot build {entry['_target_']}: {err}") from err
        else:
            raise ConfigError(f"config key '{key}' must be an evaluator name {sorted(NAMED)} or "
                              f"{{_target_: module.Class, ...}}, got {entry!r}")
        missing = [m for m in ("reset", "process", "evaluate") if not callable(getattr(evaluator, m, None))]
        if missing:
            raise ConfigError(f"config key '{key}': {type(evaluator).__name__} has no {missing} "
                              "(see panfpn.evaluation.evaluator.Evaluator)")
        out.append(evaluator)
    return out


__all__ = ["NAMED", "build_evaluators", "configured_evaluators"]
