"""A truncated or undecodable file inside a dataset: a clear error naming the file and the image
id, or with skip_bad_images the next good sample, a warning and a line in bad_images_log; the same
on resume and with DataLoader workers."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
from data_helpers import copy_first_images

from panfpn.data.bad_images import BadImageError
from panfpn.data.dataset import PanopticDataset
from panfpn.data.loader import build_training_loader
from panfpn.data.synthetic import synthetic_metadata
from panfpn.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge


@pytest.fixture
def six_images(tmp_path, synthetic_root) -> Path:
    """A private copy of the first 6 synthetic images."""
    root = tmp_path / "ds"
    copy_first_images(synthetic_root, root, 6)
    return root


def _truncate(path: Path) -> None:
    """Keep the first half of the file, as an interrupted download or copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _dataset(root: Path, **kw) -> PanopticDataset:
    transforms = Compose([ResizeShortestEdge([96, 128]), RandomHorizontalFlip()])
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic",
                           metadata=synthetic_metadata(), transforms=transforms, **kw)


def test_truncated_jpeg_error_names_file_and_image_id(six_images):
    """Today: 'image file is truncated' with no path or id."""
    _truncate(six_images / "images" / "000003.jpg")
    ds = _dataset(six_images)
    with pytest.raises(BadImageError, match=r"image id 3 of .*panoptic\.json: .*000003\.jpg: cannot "
                                            r"read as an image .*truncated.*data\.skip_bad_images=true") as e:
        ds[2]
    assert e.value.image_id == 3 and e.value.path.endswith("000003.jpg")


def test_truncated_panoptic_png_error_names_file_and_image_id(six_images):
    _truncate(six_images / "panoptic" / "000002.png")
    with pytest.raises(BadImageError, match=r"image id 2 of .*panoptic\.json: .*000002\.png: cannot read"):
        _dataset(six_images)[1]


def test_skip_returns_next_good_sample_warns_and_logs_once(six_images, tmp_path, caplog):
    _truncate(six_images / "images" / "000003.jpg")
    ds = _dataset(six_images, skip_bad_images=True)
    ds.bad_images_log = tmp_path / "run" / "bad_images.txt"
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        sample = ds[2]
    assert sample["image_id"] == 4 and sample["file_name"] == "000004.jpg"
    assert ds[2]["image_id"] == 4 and len(ds.bad_images) == 1  # counted once
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "000003.jpg" in warning[0] and "image id 3" in warning[0]
    lines = ds.bad_images_log.read_text().splitlines()
    assert len(lines) == 1
    path, image_id, error = lines[0].split("\t")
    assert path.endswith("images/000003.jpg") and image_id == "3" and "truncated" in error
    # a fresh dataset (a resumed run) appending the same image adds no second line
    again = _dataset(six_images, skip_bad_images=True)
    again.bad_images_log = ds.bad_images_log
    assert again[2]["image_id"] == 4
    assert ds.bad_images_log.read_text().splitlines() == lines


def test_skip_wraps_around_and_fails_when_every_image_is_bad(six_images):
    _truncate(six_images / "images" / "000006.jpg")
    ds = _dataset(six_images, skip_bad_images=True)
    assert ds[5]["image_id"] == 1  # the next good sample after the last is the first
    for p in (six_images / "images").glob("*.jpg"):
        _truncate(p)
    ds = _dataset(six_images, skip_bad_images=True)
    with pytest.raises(BadImageError, match=r"none of its 6 images can be decoded"):
        ds[0]


def _batches(ds, start_iter: int, n: int, workers: int = 0) -> list[dict]:
    loader = build_training_loader(ds, batch_size=2, seed=3, num_workers=workers, start_iter=start_iter)
    return list(itertools.islice(loader, n))


def test_skipping_is_identical_on_resume(six_images):
    """A run resumed at iteration 4 gets exactly the uninterrupted run's batches 4..7."""
    _truncate(six_images / "images" / "000002.jpg")
    _truncate(six_images / "images" / "000005.jpg")
    full = _batches(_dataset(six_images, skip_bad_images=True), 0, 8)
    resumed = _batches(_dataset(six_images, skip_bad_images=True), 4, 4)
    ids = [b["image_ids"] for b in full]
    assert all(i not in (2, 5) for batch in ids for i in batch)
    assert [b["image_ids"] for b in resumed] == ids[4:]
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["sem_seg"], b["sem_seg"])


def test_without_skip_resume_fails_at_the_same_image(six_images):
    _truncate(six_images / "images" / "000004.jpg")

    def first_error(start_iter: int) -> tuple[int, str]:
        loader = build_training_loader(_dataset(six_images), batch_size=2, seed=3, start_iter=start_iter)
        it = start_iter
        with pytest.raises(BadImageError) as e:
            for it, _ in zip(itertools.count(start_iter), loader):
                pass
        return it, str(e.value)

    it, message = first_error(0)
    assert "000004.jpg" in message and "image id 4" in message
    assert first_error(max(it - 1, 0)) == (it, message)


def test_skip_with_dataloader_workers_logs_each_bad_image_once(six_images, tmp_path):
    _truncate(six_images / "images" / "000002.jpg")
    ds = _dataset(six_images, skip_bad_images=True)
    ds.bad_images_log = tmp_path / "bad_images.txt"
    batches = _batches(ds, 0, 12, workers=2)  # 4 epochs: every worker meets the bad image
    assert all(2 not in b["image_ids"] for b in batches)
    assert [b["image_ids"] for b in batches] == [b["image_ids"] for b in _batches(
        _dataset(six_images, skip_bad_images=True), 0, 12)]  # workers change nothing
    lines = ds.bad_images_log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[:2] == [str(six_images / "images" / "000002.jpg"), "2"]
