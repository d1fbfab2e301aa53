"""The model's eval outputs, training losses and state_dict keys equal those recorded with the code
before the network/postprocessor split (tests/assets/model_reference, see model_reference.py)."""

import numpy as np
import pytest
import torch

from model_reference import REFERENCE, compute


@pytest.fixture(scope="module")
def pair():
    return torch.load(REFERENCE, weights_only=False), compute()


def test_state_dict_keys_are_unchanged(pair):
    want, got = pair
    assert got["state_dict_keys"] == want["state_dict_keys"]


def test_training_losses_are_unchanged(pair):
    want, got = pair
    assert list(got["losses"]) == list(want["losses"])
    for key, value in want["losses"].items():
        assert torch.equal(got["losses"][key], value), f"{key}: {got['losses'][key]} != {value}"


def test_eval_outputs_are_unchanged(pair):
    want, got = pair
    assert len(got["eval"]) == len(want["eval"]) == 2
    for g, w in zip(got["eval"], want["eval"]):
        assert len(w["scores"]) > 0 and any(s["isthing"] for s in w["segments"])
        assert g["segments"] == w["segments"]
        for key in ("id_map", "boxes", "scores", "labels", "sem_seg", "masks_packed"):
            assert torch.equal(g[key], w[key]), key
        assert g["masks_shape"] == w["masks_shape"]
        masks = np.unpackbits(g["masks_packed"].numpy())[:int(np.prod(g["masks_shape"]))]
        assert masks.any()  # the comparison covers real masks, not empty ones
