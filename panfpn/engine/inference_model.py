"""``build_inference_model(cfg)``: the model, label metadata and test transform that eval, predict
and export run with.

With ``model_from_checkpoint: true`` (the default) and ``weights`` a panfpn training checkpoint that
records its model (:mod:`panfpn.engine.model_spec`), the recorded model config, label metadata and
test transform are used; only explicit command-line overrides of ``model.*`` keys (or a
``model=<name>`` group override, which takes the config's model whole) and of
``data.val.transforms`` replace recorded values. Every key where the model used differs from the
record is logged. Other weights (Detectron2, torchvision, bare state dicts) or
``model_from_checkpoint=false`` use the config's model, metadata and transform.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
import torch
from torch import nn

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.transforms import check_test_transform, check_transforms_node
from panfpn.utils.errors import ConfigError
from panfpn.engine.model_spec import (
    ModelRecord, command_line_overrides, config_differences, effective_model_config,
    log_differences, parse_overrides, read_model_record, transform_overridden,
)
from panfpn.engine.job_setup import build_metadata, resolved
from panfpn.modeling.build import check_labels_fit, instantiate_model, load_configured_weights
from panfpn.modeling.weights import (BACKBONE_ONLY_FORMATS, LoadReport, WeightsError, check_weights_path,
                                     is_weights_name)

logger = logging.getLogger("panfpn")


@dataclass
class InferenceModel:
    """What :func:`build_inference_model` returns. ``cfg`` is the config as used: its ``model``
    node and ``data.val.transforms`` replaced by the effective ones (resolved)."""

    model: nn.Module
    metadata: DatasetMetadata
    test_transform: Any  # transforms config (``_target_`` dict) or None
    cfg: DictConfig
    record: ModelRecord | None  # the checkpoint's record when the model came from it
    report: LoadReport | None

    def transform(self) -> Any:
        """The instantiated test transform (None: images are used as they are)."""
        return instantiate(self.test_transform) if self.test_transform is not None else None


def build_inference_model(cfg: DictConfig, overrides: Sequence[str] | None = None, *,
                          require_heads: bool = True,
                          check_metadata: Callable[[DatasetMetadata], Any] | None = None) -> InferenceModel:
    """Build the model to run ``cfg.weights`` with (see the module doc for which config wins).

    ``overrides``: the user's explicit overrides (hydra syntax); None: hydra's command line when
    running under hydra, else none (from Python, the recorded model is used as it is).
    ``require_heads``: refuse backbone-only weights (ImageNet) and partial loads (``weights_partial``),
    which would leave heads random. ``check_metadata``: called with the label metadata the model
    will have, before it is built (a job's refusal of labels it cannot use: a ConfigError).
    """
    overrides = command_line_overrides() if overrides is None else list(overrides)
    weights = OmegaConf.select(cfg, "weights", default=None)
    if isinstance(weights, str) and weights and not is_weights_name(weights):
        check_weights_path(weights)  # a missing file is told first, nothing said of its contents
    record = read_model_record(weights) if weights else None
    use_record = record is not None and bool(OmegaConf.select(cfg, "model_from_checkpoint", default=True))
    config_transform = resolved(cfg, "data.val.transforms")
    if use_record:
        model_cfg = effective_model_config(cfg, record, overrides)
        _note_ignored_config_model(cfg, record, model_cfg)
        metadata = record.metadata if record.metadata is not None else build_metadata(cfg)
        keep = record.has_transform and not transform_overridden(overrides)
        transform = record.test_transform if keep else config_transform
    else:
        model_cfg = resolved(cfg, "model")
        metadata = build_metadata(cfg)
        transform = config_transform
        if weights and record is None:
            logger.info("weights %s record no model: the model comes from the config", weights)
    if record is not None:
        diffs = config_differences(record.model_config, model_cfg, "model")
        if record.has_transform and transform != record.test_transform:
            diffs.append(("data.val.transforms", record.test_transform, transform))
        log_differences(record, diffs)
    check_labels_fit(model_cfg, metadata, "of the checkpoint" if use_record else "of data.metadata")
    if check_metadata is not None:
        check_metadata(metadata)
    if transform is not None:  # a misspelt or bad transform stops the job before the model is built
        key = "data.val.transforms" + (" (recorded)" if use_record and keep else "")
        check_transforms_node(transform, key)
        try:  # a flip or crop: outputs mapped back by scaling alone would be mirrored or shifted
            check_test_transform(instantiate(transform), f"config key '{key}'")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    eff = _with_model(cfg, model_cfg, transform)
    model = instantiate_model(eff)
    report = load_configured_weights(model, eff)
    if report is not None:
        refuse_replaced_normalisation(model, model_cfg, overrides, report.source)
    if require_heads and report is not None and report.format in BACKBONE_ONLY_FORMATS:
        raise WeightsError(f"weights {report.source} hold only an ImageNet backbone: the heads would be "
                           "random; give a trained checkpoint (ours or Detectron2's)")
    if require_heads and report is not None and not report.complete:
        raise WeightsError(f"weights {report.source} ({report.format}) do not fit the model: {report.problems()}; "
                           "eval, predict and export need every tensor from the weights (weights_partial=true "
                           "is for fine-tuning: what it skips would be random here)")
    # in eval mode: a model built for inference (a Python caller would otherwise run it in train mode,
    # where it asks for targets; the tools set the mode again anyway)
    return InferenceModel(model.eval(), metadata, transform, eff, record if use_record else None, report)


def refuse_replaced_normalisation(model: nn.Module, model_cfg: dict[str, Any], overrides: Sequence[str],
                                  source: str) -> None:
    """An explicit ``model.pixel_mean`` / ``model.pixel_std`` that the weights replaced (a checkpoint holds
    its model's as buffers; Detectron2 and official files set the ones their models take) is a
    ConfigError naming the key: else the run would log the override as used and normalise with the file's."""
    given = {o.key_or_group for o in parse_overrides(overrides)}
    for name in ("pixel_mean", "pixel_std"):
        loaded = getattr(model, name, None)
        if f"model.{name}" not in given or model_cfg.get(name) is None or not isinstance(loaded, torch.Tensor):
            continue
        wanted = torch.tensor([float(v) for v in model_cfg[name]], dtype=torch.float64)
        loaded = loaded.detach().to("cpu", torch.float64).flatten()
        if wanted.shape != loaded.shape or not torch.allclose(wanted, loaded, atol=1e-4):
            raise ConfigError(f"model.{name}={[float(v) for v in model_cfg[name]]} is not used: the weights {source} "
                              f"set {name} to {[round(v, 4) for v in loaded.tolist()]}, the input normalisation "
                              "their model was trained with; remove the override")


def _note_ignored_config_model(cfg: DictConfig, record: ModelRecord, used: dict[str, Any]) -> None:
    """Log the config's model keys that the model used (``used``: the record with the command line's
    overrides) does not take: those the record sets otherwise, not those overridden (they are used)."""
    diffs = config_differences(used, resolved(cfg, "model"), "model")
    if diffs:
        logger.info("model from %s; the config's own model differs in %d key(s) (%s), not used "
                    "(model_from_checkpoint=false uses it)", record.source, len(diffs),
                    ", ".join(k for k, _, _ in diffs[:5]) + (", ..." if len(diffs) > 5 else ""))
    else:
        logger.info("model from %s (the same as the config's)", record.source)


def _with_model(cfg: DictConfig, model_cfg: dict[str, Any], transform: Any) -> DictConfig:
    eff = copy.deepcopy(cfg)
    with open_dict(eff):
        eff.model = model_cfg
        if OmegaConf.select(eff, "data.val", default=None) is not None:
            eff.data.val.transforms = transform
    return eff
