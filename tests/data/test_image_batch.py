"""panfpn.data.image_batch.image_batch: the eval batch of in-memory images, as a notebook user runs
a model (docs/models.md "From Python"); the same outputs as the dataset path the tools take."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from panfpn.data.build import synthetic_dataset
from panfpn.data.collate import collate_panoptic
from panfpn.data.image_batch import image_batch
from panfpn.data.transforms import ResizeShortestEdge
from panfpn.modeling.zoo import panoptic_fpn_small


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (3, 33, 20), dtype=torch.uint8, generator=g)]


def test_sizes_padding_and_inputs_untouched():
    images = _images()
    before = [x.clone() for x in images]
    batch = image_batch(images)
    assert batch["images"].dtype == torch.uint8 and tuple(batch["images"].shape) == (2, 3, 64, 96)
    assert batch["image_sizes"] == batch["orig_sizes"] == [(50, 70), (33, 20)]
    assert torch.equal(batch["images"][1, :, :33, :20], images[1])
    assert not batch["images"][1, :, 33:].any() and not batch["images"][1, :, :, 20:].any()
    assert all(torch.equal(a, b) for a, b in zip(images, before))


def test_numpy_hwc_bgr_and_transform():
    images = _images()
    hwc_bgr = [x.permute(1, 2, 0).numpy()[:, :, ::-1] for x in images]  # OpenCV's layout
    assert torch.equal(image_batch(hwc_bgr, channels="BGR")["images"], image_batch(images)["images"])
    batch = image_batch(images, transform=ResizeShortestEdge([100], max_size=1000))
    assert batch["image_sizes"] == [(100, 140), (165, 100)]
    assert batch["orig_sizes"] == [(50, 70), (33, 20)]


@pytest.mark.parametrize("images, error, words", [
    ([torch.rand(3, 8, 8)], ValueError, "images[0] is torch.float32: give uint8"),
    ([torch.zeros(8, 8, 3, dtype=torch.uint8)], ValueError, "images[0]: a tensor image must be [3, H, W]"),
    ([np.zeros((3, 8, 8), np.uint8)], ValueError, "images[0]: a numpy image must be [H, W, 3]"),
    ([[1, 2, 3]], TypeError, "images[0]: expected a torch tensor"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ValueError, "non-empty list"),
    ([], ValueError, "non-empty list"),
])
def test_refused_inputs_name_the_image(images, error, words):
    with pytest.raises(error) as info:
        image_batch(images)
    assert words in str(info.value)


def test_model_outputs_match_the_dataset_path(tmp_path):
    """A model run on image_batch(read images, transform) gives what the eval loader's batch gives."""
    transform = ResizeShortestEdge([96], max_size=200)
    data = synthetic_dataset("val", num_images=2, seed=3, height=48, width=80, is_train=False,
                             transforms=transform, cache_dir=str(tmp_path))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = panoptic_fpn_small(4, 4, merge={"score_thresh": 0.0, "stuff_area": 0}).eval()
    samples = [data[0], data[1]]
    from panfpn.data.image_io import read_image
    raw = [read_image(data.image_root / s["file_name"]) for s in samples]
    with torch.no_grad():
        ours = model(image_batch(raw, transform=transform))
        ref = model(collate_panoptic(samples))
    for a, b in zip(ours, ref):
        assert a["panoptic"][0].shape == (48, 80)
        assert torch.equal(a["panoptic"][0], b["panoptic"][0]) and a["panoptic"][1] == b["panoptic"][1]
        assert torch.equal(a["instances"]["boxes"], b["instances"]["boxes"])


@pytest.mark.parametrize("transform", [
    "RandomHorizontalFlip(0.5)", "RandomCrop(16, 16)", "LargeScaleJitter((64, 64))",
    "Compose([ResizeShortestEdge([64], 128), RandomHorizontalFlip(1.0)])"])
def test_a_training_transform_is_refused(transform):
    """A flip or crop would mirror / shift the outputs, which come back at the original size by
    scaling alone."""
    from panfpn.data import transforms as T
    with pytest.raises(ValueError, match="flips or crops"):
        image_batch(_images(), transform=eval(transform, vars(T)))
    image_batch(_images(), transform=T.Compose([T.ResizeShortestEdge([64], 128), T.RandomHorizontalFlip(0.0)]))


def test_an_eval_dataset_refuses_a_training_transform(tmp_path):
    """Eval outputs are scored against the untransformed ground truth at the original size: a
    flipping transform scored mirrored predictions silently."""
    from panfpn.data.transforms import RandomHorizontalFlip
    with pytest.raises(ValueError, match="eval dataset of .*flips or crops"):
        synthetic_dataset("val", num_images=1, seed=3, height=32, width=32, is_train=False,
                          transforms=RandomHorizontalFlip(1.0), cache_dir=str(tmp_path))
    synthetic_dataset("train", num_images=1, seed=3, height=32, width=32, is_train=True,
                      transforms=RandomHorizontalFlip(1.0), cache_dir=str(tmp_path))
