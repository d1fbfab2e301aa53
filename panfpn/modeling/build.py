"""The builder that turns a hydra config into a model with its weights loaded."""

from __future__ import annotations

import logging
import warnings

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.weights import LoadReport, load_weights

logger = logging.getLogger("panfpn")


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg.model`` (a ``_target_`` tree) and load ``cfg.weights`` if it is set.

    ``cfg.weights``: null, a file (ours / Detectron2 ``.pkl``/``.pth`` / torchvision ResNet), or a
    torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V1``
    (see :func:`panfpn.modeling.weights.load_weights`). Loading is strict unless
    ``cfg.weights_partial`` is true (fine-tuning: tensors that do not fit are skipped and listed).
    """
    model = instantiate_model(cfg)
    if not load_configured_weights(model, cfg) and any(
            isinstance(m, FrozenBatchNorm2d) for m in model.modules()):
        warnings.warn(
            "the backbone uses frozen BatchNorm but no weights were given: its statistics stay at "
            "their defaults, which diverges in training from scratch; set weights=... or "
            "model.backbone.norm=bn (or gn)", stacklevel=2)
    return model


def instantiate_model(cfg: DictConfig) -> nn.Module:
    """``cfg.model`` instantiated, no weights loaded."""
    if "model" not in cfg or cfg.model is None:
        raise KeyError("config has no 'model' node; pick one with model=panoptic_fpn_small|r50|r101")
    return instantiate(cfg.model, _convert_="all")


def load_configured_weights(model: nn.Module, cfg: DictConfig) -> LoadReport | None:
    """Load ``cfg.weights`` (strict unless ``cfg.weights_partial``); None when no weights are set."""
    source = OmegaConf.select(cfg, "weights", default=None)
    if not source:
        return None
    return load_weights(model, source, allow_partial=bool(OmegaConf.select(cfg, "weights_partial", default=False)))

