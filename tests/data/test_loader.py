"""Collation into padded batches, and the data loader's sampling and seeding."""

from __future__ import annotations

import itertools

import pytest
import torch

from panfpn.data import loader as loader_mod
from panfpn.data.collate import collate_panoptic
from panfpn.data.dataset import PanopticDataset
from panfpn.data.loader import ShardSampler, build_dataloader, iterate_forever
from panfpn.data.synthetic import synthetic_metadata
from panfpn.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, ResizeShortestEdge


def _dataset(root, transforms=None, is_train=True) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic",
                           metadata=synthetic_metadata(), transforms=transforms, is_train=is_train)


def _augment():
    return Compose([ResizeShortestEdge([80, 100, 128]), RandomCrop(90, 100), RandomHorizontalFlip()])


def test_collate_pads_to_divisibility(synthetic_root):
    torch.manual_seed(0)
    ds = _dataset(synthetic_root, Compose([ResizeShortestEdge([70]), RandomCrop(70, 50)]), is_train=False)
    a, b = ds[0], _dataset(synthetic_root, is_train=False)[1]
    batch = collate_panoptic([a, b], size_divisibility=32)
    assert batch["images"].shape == (2, 3, 128, 128) and batch["images"].dtype == torch.uint8
    assert batch["image_sizes"] == [(70, 50), (128, 128)]
    assert batch["orig_sizes"] == [(128, 128), (128, 128)]
    assert torch.equal(batch["images"][0, :, :70, :50], a["image"])
    assert int(batch["images"][0, :, 70:].abs().sum()) == 0 and int(batch["images"][0, :, :, 50:].sum()) == 0
    assert torch.equal(batch["sem_seg"][0, :70, :50], a["sem_seg"])
    assert bool((batch["sem_seg"][0, 70:] == 255).all()) and bool((batch["sem_seg"][0, :, 50:] == 255).all())
    assert batch["instances"][1] is b["instances"] and batch["crowd"][0] is a["crowd"]
    assert batch["image_ids"] == [1, 2] and batch["file_names"] == ["000001.jpg", "000002.jpg"]
    assert batch["gt_panoptic"][0].shape == (128, 128) and batch["segments_info"][1] == b["segments_info"]
    assert collate_panoptic([a], size_divisibility=1)["images"].shape == (1, 3, 70, 50)
    train_batch = collate_panoptic([_dataset(synthetic_root)[0]])
    assert "gt_panoptic" not in train_batch and "segments_info" not in train_batch


def _ids(loader, n):
    return [b["image_ids"] for b in itertools.islice(iterate_forever(loader), n)]


def test_epochs_reshuffle_deterministically(synthetic_root):
    ds = _dataset(synthetic_root)
    loader = build_dataloader(ds, batch_size=8, num_workers=0, shuffle=True, seed=3)
    assert len(loader) == 5
    first = _ids(loader, 10)
    epoch0, epoch1 = sum(first[:5], []), sum(first[5:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(1, 41))
    assert epoch0 != epoch1
    assert _ids(build_dataloader(ds, batch_size=8, num_workers=0, seed=3), 10) == first
    assert _ids(build_dataloader(ds, batch_size=8, num_workers=0, seed=4), 5) != first[:5]
    # resuming at epoch 1 continues with the same order
    resumed = build_dataloader(ds, batch_size=8, num_workers=0, seed=3)
    assert [b["image_ids"] for b in itertools.islice(iterate_forever(resumed, 1), 5)] == first[5:]


def test_eval_loader_keeps_order_and_every_image(synthetic_root):
    ds = _dataset(synthetic_root, is_train=False)
    loader = build_dataloader(ds, batch_size=3, num_workers=0, shuffle=False)
    ids = sum((b["image_ids"] for b in loader), [])
    assert ids == list(range(1, 41))


def test_worker_augmentation_is_seeded(synthetic_root):
    ds = _dataset(synthetic_root, _augment())

    def first_batches(seed):
        loader = build_dataloader(ds, batch_size=4, num_workers=1, seed=seed)
        return [(b["image_ids"], b["images"].clone()) for b in itertools.islice(iterate_forever(loader), 3)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(x[0] != y[0] or not torch.equal(x[1], y[1]) for x, y in zip(a, c))


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
        loader = build_dataloader(ds, batch_size=5, num_workers=0, distributed=True, seed=0)
        got.append(sum(_ids(loader, 4), []))
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == list(range(1, 41))


def test_empty_loader_is_reported(synthetic_root):
    loader = build_dataloader(_dataset(synthetic_root), batch_size=64, num_workers=0)
    with pytest.raises(ValueError, match="yields no batch"):
        next(iterate_forever(loader))
