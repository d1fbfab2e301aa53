"""What a training checkpoint records about its model, so eval, predict and export can rebuild it.

Checkpoints written by :mod:`panfpn.engine.trainer` carry, beside the weights:

``model_config``   yaml of the resolved ``cfg.model`` node (no interpolations left);
``metadata``       ``{"name", "sem_seg_mode", "categories"}`` (COCO category dicts): the label
                   spaces the model was trained in;
``test_transform`` yaml of the resolved ``cfg.data.val.transforms`` node (``null`` when none).

All three are plain strings / lists / dicts, so checkpoints still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from panfpn.data.metadata import DatasetMetadata

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
