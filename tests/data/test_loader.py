"""Collation into padded batches, and the data loader's sampling and seeding."""

from __future__ import annotations

import itertools

import pytest
import torch

from panfpn.data import loader as loader_mod
from panfpn.data.collate import collate_panoptic
from panfpn.data.dataset import PanopticDataset
from panfpn.data.loader import ShardSampler, build_dataloader, build_training_loader
from panfpn.data.synthetic import synthetic_metadata
from panfpn.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, ResizeShortestEdge


def _dataset(root, transforms=None, is_train=True) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic",
                           metadata=synthetic_metadata(), transforms=transforms, is_train=is_train)


def _augment():
    return Compose([ResizeShortestEdge([80, 100, 128]), RandomCrop(90, 100), RandomHorizontalFlip()])


def test_collate_pads_to_divisibility(synthetic_root):
    torch.manual_seed(0)
    top_left = lambda image, id_map: (image[:, :70, :50], id_map[:70, :50])  # noqa: E731 (eval refuses RandomCrop)
    ds = _dataset(synthetic_root, Compose([ResizeShortestEdge([70]), top_left]), is_train=False)
    a, b = ds[0], _dataset(synthetic_root, is_train=False)[1]
    batch = collate_panoptic([a, b], size_divisibility=32)
    assert batch["images"].shape == (2, 3, 128, 128) and batch["images"].dtype == torch.uint8
    assert batch["image_sizes"] == [(70, 50), (128, 128)]
    assert batch["orig_sizes"] == [(128, 128), (128, 128)]
    assert torch.equal(batch["images"][0, :, :70, :50], a["image"])
    assert int(batch["images"][0, :, 70:].abs().sum()) == 0 and int(batch["images"][0, :, :, 50:].sum()) == 0
    assert torch.equal(batch["sem_seg"][0, :70, :50], a["sem_seg"])
    assert bool((batch["sem_seg"][0, 70:] == 255).all()) and bool((batch["sem_seg"][0, :, 50:] == 255).all())
    assert batch["instances"][1] is b["instances"] and "crowd" not in batch
    assert batch["image_ids"] == [1, 2] and batch["file_names"] == ["000001.jpg", "000002.jpg"]
    assert batch["gt_panoptic"][0].shape == (128, 128) and batch["segments_info"][1] == b["segments_info"]
    assert collate_panoptic([a], size_divisibility=1)["images"].shape == (1, 3, 70, 50)
    train_batch = collate_panoptic([_dataset(synthetic_root)[0]])
    assert "gt_panoptic" not in train_batch and "segments_info" not in train_batch


def _ids(loader, n):
    return [b["image_ids"] for b in itertools.islice(loader, n)]


def test_epochs_reshuffle_deterministically_and_resume_mid_epoch(synthetic_root):
    ds = _dataset(synthetic_root)
    first = _ids(build_training_loader(ds, batch_size=8, seed=3), 10)
    epoch0, epoch1 = sum(first[:5], []), sum(first[5:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(1, 41))
    assert epoch0 != epoch1
    assert _ids(build_training_loader(ds, batch_size=8, seed=3), 10) == first
    assert _ids(build_training_loader(ds, batch_size=8, seed=4), 5) != first[:5]
    # Resuming at iteration 3 (mid epoch 0) continues with exactly the same stream.
    assert _ids(build_training_loader(ds, batch_size=8, seed=3, start_iter=3), 7) == first[3:]


def test_resumed_loader_augments_like_the_uninterrupted_one(synthetic_root):
    ds = _dataset(synthetic_root, _augment())
    full = list(itertools.islice(build_training_loader(ds, batch_size=4, seed=0), 4))
    resumed = list(itertools.islice(build_training_loader(ds, batch_size=4, seed=0, start_iter=2), 2))
    for a, b in zip(full[2:], resumed):
        assert a["image_ids"] == b["image_ids"] and torch.equal(a["images"], b["images"])


def test_eval_loader_keeps_order_and_every_image(synthetic_root):
    ds = _dataset(synthetic_root, is_train=False)
    loader = build_dataloader(ds, batch_size=3, num_workers=0)
    ids = sum((b["image_ids"] for b in loader), [])
    assert ids == list(range(1, 41))


def test_worker_augmentation_is_seeded(synthetic_root):
    ds = _dataset(synthetic_root, _augment())

    def first_batches(seed, workers=1):
        loader = build_training_loader(ds, batch_size=4, num_workers=workers, seed=seed)
        return [(b["image_ids"], b["images"].clone()) for b in itertools.islice(loader, 3)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(x[0] != y[0] or not torch.equal(x[1], y[1]) for x, y in zip(a, c))
    # The augmentation does not depend on the number of workers either.
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, first_batches(0, 0)))


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sum(shards, []) == list(range(10))
    assert [len(s) for s in shards] == [4, 4, 2]
    assert list(ShardSampler(2, 2, 3)) == []


def test_distributed_ranks_get_disjoint_training_slices(synthetic_root, monkeypatch):
    ds = _dataset(synthetic_root)
    got = []
    for rank in range(2):
        monkeypatch.setattr(loader_mod, "_rank_world", lambda rank=rank: (rank, 2))
        loader = build_training_loader(ds, batch_size=5, distributed=True, seed=0)
        got.append(sum(_ids(loader, 4), []))
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == list(range(1, 41))


def test_empty_training_set_is_reported(synthetic_root):
    ds = _dataset(synthetic_root)
    ds.records = []
    with pytest.raises(ValueError, match="training dataset PanopticDataset has no images"):
        build_training_loader(ds, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        build_training_loader(_dataset(synthetic_root), batch_size=0, seed=0)
