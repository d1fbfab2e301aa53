"""What an evaluation ran with, for the top of report.html: checkpoint, data, model, merge, transform."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import panfpn
from panfpn.evaluation.build import evaluated_dataset
from panfpn.modeling.weights import read_torch_file

logger = logging.getLogger("panfpn")


def eval_context(cfg: DictConfig, built: Any, dataset: Any) -> dict[str, str]:
    """``{label: text}`` in display order. ``built``: the :class:`~panfpn.engine.inference_model.InferenceModel`;
    ``dataset``: the validation dataset (its length is the split's image count)."""
    weights = Path(str(cfg.weights))
    model_cfg = OmegaConf.to_container(built.cfg.model, resolve=True)
    merge = {k: v for k, v in (model_cfg.get("merge") or {}).items() if k != "_target_"}
    n_params = sum(p.numel() for p in built.model.parameters())
    data_val = built.cfg.data.val
    return {
        "checkpoint": str(weights.resolve() if weights.exists() else weights),
        "iteration": _iteration(weights),
        "training folder": str(weights.resolve().parent) if weights.exists() else "-",
        "dataset": evaluated_dataset(built.cfg),
        "labels": f"{built.metadata.name}: {len(built.metadata.categories)} categories"
                  + (" (recorded in the checkpoint)" if built.record is not None else " (from the config)"),
        "split": f"{data_val.get('split', '-')}: {len(dataset)} images"
                 + (f", the first {cfg.eval.max_images} evaluated (eval.max_images)" if cfg.eval.max_images else ""),
        "model": f"{_model_name(model_cfg)}, {n_params / 1e6:.2f} M parameters"
                 + (" (recorded in the checkpoint)" if built.record is not None else " (from the config)"),
        "merge": f"{_merge_rules(merge)}: " + ", ".join(f"{k}={v}" for k, v in merge.items()),
        "test transform": json.dumps(built.test_transform, default=str) if built.test_transform else "none",
        "panfpn": panfpn.__version__,
    }


def _iteration(weights: Path) -> str:
    """The training iteration a panfpn checkpoint was saved at ('-' for other weights)."""
    if weights.suffix not in (".pth", ".pt") or not weights.is_file():
        return "-"
    try:
        obj = read_torch_file(weights)
    except Exception as err:  # the model was loaded from it already: report, don't fail the run
        logger.warning("report: cannot read the iteration of %s: %s", weights, err)
        return "-"
    return str(obj["iteration"]) if isinstance(obj, dict) and "iteration" in obj else "-"


def _model_name(model_cfg: dict) -> str:
    """hydra's model group choice when running under hydra, else the backbone's depth."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["model"])
    except (ValueError, KeyError):
        backbone = model_cfg.get("backbone") or {}
        return f"{str(model_cfg.get('_target_', 'model')).rsplit('.', 1)[-1]} R{backbone.get('depth', '?')}"


def _merge_rules(merge: dict) -> str:
    """'Detectron2' or 'textbook' rules when the thresholds are one of the two presets."""
    if merge.get("overlap_thresh") is None and merge.get("stuff_area") == 0:
        return "textbook rules"
    return "Detectron2 rules" if merge.get("overlap_thresh") is not None else "custom rules"


__all__ = ["eval_context"]
