"""The model's eval outputs, training losses and state_dict keys equal those recorded with the code
before the network/postprocessor split (tests/assets/model_reference, see model_reference.py).

Discrete outputs (ids, labels, masks, semantic labels) must be identical; float values within
float32 rounding (1e-6 relative), since another CPU may order a reduction differently. On the
machine that recorded the file the values are bitwise equal.
"""

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
        torch.testing.assert_close(got["losses"][key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_eval_outputs_are_unchanged(pair):
    want, got = pair
    assert len(got["eval"]) == len(want["eval"]) == 2
    for g, w in zip(got["eval"], want["eval"]):
        assert len(w["scores"]) > 0 and any(s["isthing"] for s in w["segments"])
        assert [{**s, "score": None} for s in g["segments"]] == [{**s, "score": None} for s in w["segments"]]
        thing_scores = [[s["score"] for s in r["segments"] if s["isthing"]] for r in (g, w)]
        assert thing_scores[0] == pytest.approx(thing_scores[1], rel=1e-6)
        for key in ("id_map", "labels", "sem_seg", "masks_packed"):
            assert torch.equal(g[key], w[key]), key
        for key in ("boxes", "scores"):
            torch.testing.assert_close(g[key], w[key], rtol=1e-6, atol=1e-5, msg=key)
        assert g["masks_shape"] == w["masks_shape"]
        masks = np.unpackbits(g["masks_packed"].numpy())[:int(np.prod(g["masks_shape"]))]
        assert masks.any()  # the comparison covers real masks, not empty ones
