"""Shared test setup: CPU only, one thread per process so that parallel runs stay fast on 2 cores."""

import os

import pytest
import torch

from config_helpers import compose_config

torch.set_num_threads(1)
os.environ.setdefault("PANFPN_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test"))

SHARED_SAMPLE = os.path.join(os.path.dirname(__file__), "assets", "coco_panoptic_sample")


@pytest.fixture
def compose_cfg():
    """The compose helper (config_helpers.compose_config) as a fixture."""
    return compose_config


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
