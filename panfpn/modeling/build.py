"""The builder that turns a hydra config into a model with its weights loaded."""

from __future__ import annotations

import logging
import warnings

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.weights import load_weights

logger = logging.getLogger("panfpn")


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg.model`` (a ``_target_`` tree) and load ``cfg.weights`` if it is set.

    ``cfg.weights``: null, a file (ours / Detectron2 ``.pkl``/``.pth`` / torchvision ResNet), or a
    torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V1``
    (see :func:`panfpn.modeling.weights.load_weights`). The load report is logged.
    """
    if "model" not in cfg or cfg.model is None:
        raise KeyError("config has no 'model' node; pick one with model=panoptic_fpn_small|r50|r101")
    model = instantiate(cfg.model, _convert_="all")
    source = OmegaConf.select(cfg, "weights", default=None)
    if source:
        load_weights(model, source)
    elif any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) and not _backbone_pretrained(cfg):
        warnings.warn(
            "the backbone uses frozen BatchNorm but no weights were given: its statistics stay at "
            "their defaults, which diverges in training from scratch; set weights=... or "
            "model.backbone.norm=bn (or gn)", stacklevel=2)
    return model


def _backbone_pretrained(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "model.backbone.weights", default=None))
