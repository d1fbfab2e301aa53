"""What a training checkpoint records about its model, so eval, predict and export can rebuild it.

Checkpoints written by :mod:`panfpn.engine.train_run` carry, beside the weights:

``model_config``   yaml of the resolved ``cfg.model`` node (no interpolations left);
``metadata``       ``{"name", "sem_seg_mode", "categories"}`` (COCO category dicts): the label
                   spaces the model was trained in;
``test_transform`` yaml of the resolved ``cfg.data.val.transforms`` node (``null`` when none).

All three are plain strings / lists / dicts, so checkpoints still load with
``torch.load(weights_only=True)``. The reading side (:func:`read_model_record` and the helpers
below) is used by :func:`panfpn.engine.inference_model.build_inference_model`.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from panfpn.data.metadata import DatasetMetadata
from panfpn.engine.config import ConfigError
from panfpn.modeling.weights import TORCH_SUFFIXES, read_torch_file

logger = logging.getLogger("panfpn")

MODEL_SPEC_KEYS = ("model_config", "metadata", "test_transform")


def describe_model(cfg: DictConfig, metadata: DatasetMetadata) -> dict[str, Any]:
    """The checkpoint entries that let a later job rebuild this run's model and label spaces."""
    transforms = OmegaConf.select(cfg, "data.val.transforms", default=None)
    return {
        "model_config": OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))),
        "metadata": {"name": metadata.name, "sem_seg_mode": metadata.sem_seg_mode,
                     "categories": metadata.to_coco_categories()},
        "test_transform": OmegaConf.to_yaml(OmegaConf.create(
            {"transforms": OmegaConf.to_container(transforms, resolve=True) if transforms is not None else None})),
    }


# ---------------------------------------------------------------------------------------------
# Reading side: eval, predict and export rebuild the recorded model (see build_inference_model).


@dataclass(frozen=True)
class ModelRecord:
    """What a checkpoint recorded: the resolved model config (a plain dict), the label metadata
    (None for checkpoints that predate it) and the test transform config (``has_transform``: recorded)."""

    source: str
    model_config: dict[str, Any]
    metadata: DatasetMetadata | None
    test_transform: Any
    has_transform: bool


def read_model_record(weights: Any) -> ModelRecord | None:
    """The model record of a panfpn training checkpoint, or None for anything else (Detectron2 or
    torchvision weights, bare state dicts, weights names)."""
    if not isinstance(weights, (str, os.PathLike)) or not weights:
        return None
    path = Path(weights)
    if path.suffix not in TORCH_SUFFIXES or not path.is_file():
        return None  # load_weights reports missing files and other formats
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or "model" not in obj:
        return None
    if isinstance(obj.get("model_config"), str):
        meta = obj.get("metadata")
        transform = OmegaConf.create(obj.get("test_transform") or "transforms: null")
        return ModelRecord(
            str(path), OmegaConf.to_container(OmegaConf.create(obj["model_config"])),
            DatasetMetadata.from_coco_categories(meta["categories"], sem_seg_mode=meta["sem_seg_mode"],
                                                 name=meta.get("name", "")) if meta else None,
            OmegaConf.to_container(transform)["transforms"], "test_transform" in obj)
    if isinstance(obj.get("config"), str):
        return _legacy_record(path, obj["config"])
    return None


def _legacy_record(path: Path, config_yaml: str) -> ModelRecord | None:
    """Checkpoints written before the record: the model node of their full training config."""
    full = OmegaConf.create(config_yaml)
    try:
        model = OmegaConf.to_container(full.model, resolve=True)
        transforms = OmegaConf.select(full, "data.val.transforms", default=None)
        transform = OmegaConf.to_container(transforms, resolve=True) if transforms is not None else None
    except OmegaConfBaseException as err:
        logger.warning("%s predates the model record and its training config does not resolve (%s): "
                       "the model comes from the config", path, err)
        return None
    logger.info("%s predates the model record: model and test transform from its training config, "
                "label metadata from the config's data", path)
    return ModelRecord(str(path), model, None, transform, True)


def command_line_overrides() -> list[str]:
    """The user's overrides when running under hydra (``HydraConfig``), else none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _parsed(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def effective_model_config(cfg: DictConfig, record: ModelRecord, overrides: Sequence[str]) -> dict[str, Any]:
    """The recorded model config with the explicit ``model.*`` overrides applied (values taken from
    ``cfg``, resolved); a ``model=<name>`` override replaces it with the config's model."""
    parsed = _parsed(overrides)
    if any(o.key_or_group == "model" for o in parsed):
        logger.info("model=... given on the command line: the config's model replaces the one recorded in %s",
                    record.source)
        return OmegaConf.to_container(cfg.model, resolve=True)
    node = OmegaConf.create(copy.deepcopy(record.model_config))
    for o in parsed:
        key = o.key_or_group
        if not key.startswith("model."):
            continue
        sub = key[len("model."):]
        if o.is_delete():
            parent, _, leaf = sub.rpartition(".")
            holder = OmegaConf.select(node, parent) if parent else node
            if holder is not None and leaf in holder:
                del holder[leaf]
            continue
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        OmegaConf.update(node, sub, value, merge=False, force_add=True)
    return OmegaConf.to_container(node)


def transform_overridden(overrides: Sequence[str]) -> bool:
    """Whether the command line sets the test transform (``data.val.transforms...``)."""
    return any(o.key_or_group == "data.val.transforms" or o.key_or_group.startswith("data.val.transforms.")
               for o in _parsed(overrides))


def flatten(node: Any, prefix: str) -> dict[str, Any]:
    """Dotted keys -> leaf values of nested dicts (lists are leaves)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


_ABSENT = "<absent>"


def config_differences(recorded: Any, used: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, used value)`` for every leaf that differs, in key order."""
    a, b = flatten(recorded, prefix), flatten(used, prefix)
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def log_differences(record: ModelRecord, diffs: list[tuple[str, Any, Any]]) -> None:
    """One WARNING line per key where the model used differs from the checkpoint's record."""
    if not diffs:
        return
    logger.warning("the model used differs from the one recorded in %s in %d key(s):", record.source, len(diffs))
    for key, recorded, used in diffs:
        logger.warning("  %s: checkpoint %s, used %s", key, _show(recorded), _show(used))


def _show(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_labels_fit_model(model_config: dict[str, Any], metadata: DatasetMetadata, where: str) -> None:
    """Raise ConfigError when the model's class counts differ from the label metadata's."""
    expected = {
        "semantic_head.num_classes": metadata.num_sem_classes,
        "roi_heads.box_head.num_classes": metadata.num_thing_classes,
        "roi_heads.mask_head.num_classes": metadata.num_thing_classes,
        "thing_sem_labels": list(metadata.thing_sem_labels),
        "num_thing_classes": metadata.num_thing_classes,  # mask-classification models (Mask2Former)
        "num_sem_classes": metadata.num_sem_classes,
    }
    flat = flatten(model_config, "")
    for key, value in expected.items():
        if key in flat and flat[key] != value:
            raise ConfigError(f"model.{key} is {flat[key]!r} but the label metadata {where} "
                              f"('{metadata.name}') gives {value!r}")


def same_labels(a: DatasetMetadata, b: DatasetMetadata) -> bool:
    """Same category ids, thing/stuff split and semantic mode (names and colours may differ)."""
    key = lambda m: (m.sem_seg_mode, [(c.id, c.isthing) for c in m.categories])  # noqa: E731
    return key(a) == key(b)
