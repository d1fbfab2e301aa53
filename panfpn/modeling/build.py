"""The builder that turns a hydra config into a model with its weights loaded, and the one check
that a model config's label spaces fit a dataset's categories."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import panfpn.data.resolvers  # noqa: F401 - the model configs read ${data.num_*}: panfpn.labels
from panfpn.data.metadata import DatasetMetadata
from panfpn.modeling.weights import LoadReport, load_weights
from panfpn.utils.errors import ConfigError

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



# Where a config node holds each label fact: node -> {key: DatasetMetadata property}. "model": a
# PanopticFPN config (configs/model/*.yaml); "data": the keys the model configs read, derived from
# data.metadata in configs/config.yaml (so they differ only when set by hand).
LABEL_CONFIG_KEYS = {
    "model": {"semantic_head.num_classes": "num_sem_classes", "roi_heads.box_head.num_classes": "num_thing_classes",
              "roi_heads.mask_head.num_classes": "num_thing_classes", "thing_sem_labels": "thing_sem_labels",
              # mask-classification models (Mask2Former) take the counts directly
              "num_thing_classes": "num_thing_classes", "num_sem_classes": "num_sem_classes"},
    "data": {"num_thing_classes": "num_thing_classes", "num_sem_classes": "num_sem_classes",
             "thing_sem_labels": "thing_sem_labels"},
}


def check_labels_fit(config: Mapping[str, Any], metadata: DatasetMetadata, where: str, *,
                     node: str = "model") -> None:
    """Raise ConfigError when the class counts or thing labels in ``config`` (a ``model`` node: a
    config's, a checkpoint's recorded one; or the ``data`` node's derived keys) differ from what
    ``metadata``'s categories give; ``where`` says whose metadata, for the message. The one check of
    labels against a dataset; keys the config lacks (another architecture) are not checked."""
    for key, prop in LABEL_CONFIG_KEYS[node].items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            continue
        wants = getattr(metadata, prop)
        got = list(value) if prop == "thing_sem_labels" and not isinstance(value, (str, int)) else value
        if got != (list(wants) if prop == "thing_sem_labels" else wants):
            raise ConfigError(f"{node}.{key} is {got!r} but the label metadata {where} "
                              f"('{metadata.name}') gives {wants!r}")


def model_labels(model: Any) -> dict[str, Any]:
    """The label facts a built model holds, in :data:`LABEL_CONFIG_KEYS` ``model`` keys, for
    :func:`check_labels_fit` (the one check, also for a model built from Python): Panoptic FPN's
    head sizes and thing labels, Mask2Former's class space. ``{}`` for another model (nothing checked)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    space = getattr(model, "space", None)
    if space is not None and hasattr(model, "num_sem_classes"):  # Mask2Former
        thing_sem = [s for s, t in zip(space.sem_label, space.isthing) if t]
        return {"num_thing_classes": len(thing_sem), "num_sem_classes": int(model.num_sem_classes),
                "thing_sem_labels": sorted(set(thing_sem)) if len(set(thing_sem)) == 1 else thing_sem}
    box_head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    predictor = getattr(getattr(model, "semantic_head", None), "predictor", None)
    if box_head is None or predictor is None or not hasattr(model, "thing_sem_labels"):
        return {}
    return {"semantic_head": {"num_classes": int(predictor.out_channels)},
            "roi_heads": {"box_head": {"num_classes": int(box_head.num_classes)}},
            "thing_sem_labels": [int(x) for x in model.thing_sem_labels]}
