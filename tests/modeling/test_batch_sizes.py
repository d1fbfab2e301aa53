"""A hand-made eval batch (the only way to run a model from Python) whose sizes do not fit its images
is an error naming the key and the image, for Panoptic FPN and Mask2Former alike; before, an
``image_sizes`` entry larger than the tensor ran on the padding, a short ``orig_sizes`` list made
Mask2Former return fewer outputs than images, and a list of images or a zero size failed deep
inside (AttributeError, ZeroDivisionError)."""

from __future__ import annotations

import warnings

import pytest
import torch

from panfpn.modeling.zoo import build_named_model


@pytest.fixture(scope="module", params=["panoptic_fpn_small", "mask2former_small"])
def model(request):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights
        return build_named_model(request.param, 2, 2).eval()


def _batch(**changes):
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    return {"images": images, "image_sizes": [(64, 96), (40, 70)], "orig_sizes": [(64, 96), (40, 70)]} | changes


@pytest.mark.parametrize("changes, error, words", [
    ({"image_sizes": [(64, 96), (80, 70)]}, ValueError, "batch['image_sizes'][1] is (80, 70), larger than"),
    ({"orig_sizes": [(64, 96)]}, ValueError, "batch['orig_sizes'] has 1 sizes for 2 images"),
    ({"image_sizes": [(64, 96)]}, ValueError, "batch['image_sizes'] has 1 sizes for 2 images"),
    ({"image_sizes": [(0, 96), (40, 70)]}, ValueError, "batch['image_sizes'][0] is (0, 96)"),
    ({"orig_sizes": [(64, 96), (40, 0)]}, ValueError, "batch['orig_sizes'][1] is (40, 0)"),
    ({"images": [torch.zeros(3, 64, 96, dtype=torch.uint8)] * 2}, TypeError, "got list"),
])
def test_sizes_that_do_not_fit_are_named(model, changes, error, words):
    with torch.no_grad(), pytest.raises(error) as info:
        model(_batch(**changes))
    assert words in str(info.value)


def test_fitting_batch_gives_one_output_per_image_at_its_original_size(model):
    with torch.no_grad():
        out = model(_batch(image_sizes=[(64, 96), (40, 70)], orig_sizes=[(128, 192), (20, 35)]))
    assert [tuple(o["panoptic"][0].shape) for o in out] == [(128, 192), (20, 35)]
    assert [tuple(o["sem_seg"].shape) for o in out] == [(128, 192), (20, 35)]


def test_inference_batch_in_train_mode_says_call_eval(model):
    """Models are built in train mode; an inference batch there was a bare KeyError ('sem_seg' /
    'instances')."""
    model.train()
    try:
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            model(_batch())
    finally:
        model.eval()


def test_detectron2_style_list_input_points_to_image_batch(model):
    """Detectron2 models take a list of per-image dicts; ours one batch dict (a bare TypeError
    'list indices must be integers' before)."""
    with torch.no_grad(), pytest.raises(TypeError, match="image_batch"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])
    with torch.no_grad(), pytest.raises(KeyError, match="lacks 'orig_sizes'"):
        model({k: v for k, v in _batch().items() if k != "orig_sizes"})
