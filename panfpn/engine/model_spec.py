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
# Modules that moved (Panoptic FPN's own parts into panfpn/modeling/panoptic_fpn/): the recorded
# ``_target_``s of checkpoints written before the move are read under the new names.
MOVED_MODULES = {f"panfpn.modeling.{name}.": f"panfpn.modeling.panoptic_fpn.{name}."
                 for name in ("network", "postprocess", "rpn", "roi_heads", "box_head", "mask_head",
                              "semantic_head", "roi_ops", "roi_align_sparse", "detectron2_import", "export")}


def relocated_targets(node: Any) -> Any:
    """``node`` (a plain dict/list tree) with every ``_target_`` of a moved module renamed."""
    if isinstance(node, dict):
        out = {k: relocated_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_MODULES.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(node, list):
        return [relocated_targets(v) for v in node]
    return node


def describe_model(cfg: DictConfig, metadata: DatasetMetadata, model: Any = None) -> dict[str, Any]:
    """The checkpoint entries that let a later job rebuild this run's model and label spaces;
    ``model``: the trained model, whose settings the weights loader changed win over the config's."""
    transforms = OmegaConf.select(cfg, "data.val.transforms", default=None)
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "model_config": OmegaConf.to_yaml(OmegaConf.create(with_loaded_settings(model_config, model))),
        "metadata": {"name": metadata.name, "sem_seg_mode": metadata.sem_seg_mode,
                     "categories": metadata.to_coco_categories()},
        "test_transform": OmegaConf.to_yaml(OmegaConf.create(
            {"transforms": OmegaConf.to_container(transforms, resolve=True) if transforms is not None else None})),
    }


def with_loaded_settings(model_config: dict[str, Any], model: Any) -> dict[str, Any]:
    """``model_config`` with the settings that have no tensor and that loading weights set on the
    built ``model`` (the Detectron2 import moves the ResNet stride: ``backbone.stride_in_1x1``);
    the state dict alone would rebuild the model with the config's value."""
    backbone = getattr(model, "backbone", None)
    node = model_config.get("backbone") if isinstance(model_config, dict) else None
    if isinstance(node, dict) and node.get("stride_in_1x1") is not None and hasattr(backbone, "stride_in_1x1"):
        node["stride_in_1x1"] = bool(backbone.stride_in_1x1)
    return model_config


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
            str(path), relocated_targets(OmegaConf.to_container(OmegaConf.create(obj["model_config"]))),
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
    return ModelRecord(str(path), relocated_targets(model), None, transform, True)


def command_line_overrides() -> list[str]:
    """The user's overrides when running under hydra (``HydraConfig``), else none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parse of command-line overrides (``key_or_group``, ``input_line``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def effective_model_config(cfg: DictConfig, record: ModelRecord, overrides: Sequence[str]) -> dict[str, Any]:
    """The recorded model config with the explicit ``model.*`` overrides applied (values taken from
    ``cfg``, resolved); a ``model=<name>`` override replaces it with the config's model."""
    parsed = parse_overrides(overrides)
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
        refuse_other_models_key(cfg, record, node, o)
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


def refuse_other_models_key(cfg: DictConfig, record: ModelRecord, node: Any, override: Any) -> None:
    """A ``model.<section>...`` override whose section the recorded model lacks while the config's model,
    another architecture, has it (``model.merge.score_thresh=0.3``, Panoptic FPN's, with a Mask2Former
    checkpoint under the default config): a ConfigError naming both models, not the constructor's
    TypeError ('unexpected keyword argument merge') after the record took the key."""
    section = override.key_or_group[len("model."):].split(".")[0]
    if override.is_delete() or section in node:
        return
    ours, theirs = node.get("_target_"), OmegaConf.select(cfg, "model._target_", default=None)
    if theirs is None or str(ours).rsplit(".", 1)[-1] == str(theirs).rsplit(".", 1)[-1]:
        return  # the same class (possibly by another module path): a key the record predates
    raise ConfigError(f"{override.input_line}: model.{section} is a key of the config's model ({theirs}), not of "
                      f"the model recorded in {record.source} ({ours}), which is the one built; remove it "
                      "(model_from_checkpoint=false builds the config's model instead)")


def transform_overridden(overrides: Sequence[str]) -> bool:
    """Whether the command line sets the test transform (``data.val.transforms...``)."""
    return any(o.key_or_group == "data.val.transforms" or o.key_or_group.startswith("data.val.transforms.")
               for o in parse_overrides(overrides))


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


def same_labels(a: DatasetMetadata, b: DatasetMetadata) -> bool:
    """Same category ids, thing/stuff split and semantic mode (names and colours may differ:
    :func:`renamed_categories` compares the names)."""
    key = lambda m: (m.sem_seg_mode, [(c.id, c.isthing) for c in m.categories])  # noqa: E731
    return key(a) == key(b)


def _same_name(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def renamed_categories(model_labels: DatasetMetadata, dataset_labels: DatasetMetadata) -> list[tuple[int, str, str]]:
    """``(id, model's name, dataset's name)`` for every id both have under different names
    (compared without case and surrounding spaces), in id order."""
    theirs = {c.id: c.name for c in dataset_labels.categories}
    return sorted((c.id, c.name, theirs[c.id]) for c in model_labels.categories
                  if c.id in theirs and not _same_name(c.name, theirs[c.id]))


def _trained_on(weights: Path) -> str:
    """`` (data=... data.root=... [data.metadata.use_train_id=...], as in its training folder's
    config.yaml)``, or '' where the weights' folder holds no readable training config: the overrides
    that evaluate on the training data (Cityscapes: the same data with label or train ids)."""
    config = weights.parent / "config.yaml"
    if not config.is_file():
        return ""
    import yaml

    try:
        loaded = OmegaConf.load(config)
        name = OmegaConf.select(loaded, "data.name") if isinstance(loaded, DictConfig) else None
        root = OmegaConf.select(loaded, "data.root") if name else None
        train_id = OmegaConf.select(loaded, "data.metadata.use_train_id") if name else None
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:  # a hint only: the error it joins is the one to report
        logger.info("%s: no training data named from it (%s)", config, err)
        return ""
    if not name:
        return ""
    train_id_text = f" data.metadata.use_train_id={str(train_id).lower()}" if isinstance(train_id, bool) else ""
    return f" (data={name}" + (f" data.root={root}" if root else "") + train_id_text + f", as in {config})"


def check_dataset_labels(model_labels: DatasetMetadata, dataset_labels: DatasetMetadata,
                         cfg: DictConfig) -> DatasetMetadata:
    """The labels to evaluate and report with. A model evaluated on another label space (other
    ids, thing/stuff split or semantic mode) gives a meaningless PQ: ConfigError. Same ids under
    other names (a dataset that reuses the ids for other classes, or two classes swapped): a
    ConfigError naming each id and both names, unless ``eval.allow_renamed_categories`` accepts
    the dataset's names on purpose (logged); the dataset's labels are returned then."""
    if not same_labels(model_labels, dataset_labels):
        raise ConfigError(
            f"the model of {cfg.weights} predicts the categories of '{model_labels.name}' "
            f"({len(model_labels.categories)} categories, ids {[c.id for c in model_labels.categories][:8]}...) but "
            f"data.val is '{dataset_labels.name}' ({len(dataset_labels.categories)} categories, ids "
            f"{[c.id for c in dataset_labels.categories][:8]}...): evaluate on the dataset it was trained for"
            + _trained_on(Path(str(cfg.weights))))
    renamed = renamed_categories(model_labels, dataset_labels)
    if not renamed:
        return model_labels
    pairs = "; ".join(f"id {i}: model '{ours}', dataset '{theirs}'" for i, ours, theirs in renamed)
    if not OmegaConf.select(cfg, "eval.allow_renamed_categories", default=False):
        raise ConfigError(
            f"data.val ('{dataset_labels.name}') names {len(renamed)} of the category ids of the model of "
            f"{cfg.weights} ('{model_labels.name}') differently: {pairs}. The dataset uses the model's ids "
            "for other classes (or swaps them), so its PQ would score the wrong classes; if they are the "
            "same classes under other names, set eval.allow_renamed_categories=true")
    logger.warning("eval.allow_renamed_categories=true: %d category id(s) of the model of %s are named "
                   "differently in data.val; the dataset's names are used: %s", len(renamed), cfg.weights, pairs)
    return dataset_labels
