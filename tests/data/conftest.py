"""Fixtures of the data tests: one small synthetic dataset per session, and a dataset factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import copy_first_images

from panfpn.data.synthetic import generate_dataset

# 40 images: at 15 % crowd probability this seed gives several crowd segments (asserted in tests).
NUM_IMAGES = 40
SEED = 7


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Folder of a generated dataset of ``NUM_IMAGES`` images from ``SEED`` (attributes of the
    fixture's module, read by tests through ``synthetic_spec``)."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "ds", NUM_IMAGES, SEED)


@pytest.fixture(scope="session")
def synthetic_spec() -> tuple[int, int]:
    """(number of images, seed) of ``synthetic_root``."""
    return NUM_IMAGES, SEED


@pytest.fixture
def small_copy(tmp_path, synthetic_root):
    """A private copy of the first 3 images of ``synthetic_root``, free to edit or corrupt:
    returns (root, its JSON as a dict). Write the dict back to ``root / "panoptic.json"``."""
    root = tmp_path / "ds"
    return root, copy_first_images(synthetic_root, root, 3)
