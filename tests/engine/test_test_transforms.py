"""A flip or crop in the test transform: eval, predict and export map outputs back to the
original size by scaling alone, so they would come out mirrored or shifted against the image
without a word; refused up front as a config error (one line, exit 2 from the tools)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from config_helpers import compose_config
from panfpn.data.image_files import ImageFileDataset
from panfpn.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.tool_errors import input_error
from panfpn.utils.errors import ConfigError

FLIP = {"_target_": "panfpn.data.transforms.Compose", "transforms": [
    {"_target_": "panfpn.data.transforms.ResizeShortestEdge", "short_edge_lengths": [64], "max_size": 320},
    {"_target_": "panfpn.data.transforms.RandomHorizontalFlip", "prob": 0.5}]}


def test_a_flip_in_data_val_transforms_is_a_config_error_before_the_model_is_built():
    cfg = compose_config(["experiment=synthetic_cpu"])
    cfg.data.val.transforms = OmegaConf.create(FLIP)
    with pytest.raises(ConfigError, match=r"config key 'data.val.transforms'.*RandomHorizontalFlip") as caught:
        build_inference_model(cfg, [])
    assert input_error(caught.value) is caught.value  # the tools' one line and exit 2
    cfg.data.val.transforms = OmegaConf.create(FLIP["transforms"][0])
    assert not build_inference_model(cfg, []).model.training  # the resize alone runs


def test_image_files_refuse_a_flipping_transform(tmp_path):
    with pytest.raises(ValueError, match="flips or crops"):
        ImageFileDataset([tmp_path / "a.jpg"], transforms=Compose([ResizeShortestEdge([64], 320),
                                                                  RandomHorizontalFlip(0.5)]))
    assert ImageFileDataset([tmp_path / "a.jpg"], transforms=ResizeShortestEdge([64], 320)).transforms is not None
