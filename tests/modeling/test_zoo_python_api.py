"""The zoo builders as a notebook user calls them (docs/models.md "From Python")."""

from __future__ import annotations

import warnings

import pytest
import torch

from panfpn.modeling.weights import WeightsError
from panfpn.modeling.zoo import panoptic_fpn_small


def test_weights_that_do_not_fit_name_the_python_spelling(tmp_path):
    """The refusal named only the config key weights_partial=true, not the keyword the caller has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tmp_path / "two_things.pth"
        torch.save({"model": panoptic_fpn_small(2, 2).state_dict()}, path)
        with pytest.raises(WeightsError, match=r"allow_partial=True.*build_inference_model"):
            panoptic_fpn_small(3, 2, weights=path)
        model = panoptic_fpn_small(3, 2, weights=path, allow_partial=True)
    assert model.roi_heads.box_head.num_classes == 3
