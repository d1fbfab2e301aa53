import itertools

import torch

from panfpn.data.sampler import ResumableTrainingSampler, SeededSampleDataset


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumed_stream_continues_exactly():
    full = take(ResumableTrainingSampler(7, seed=3), 30)
    resumed = take(ResumableTrainingSampler(7, seed=3, start=11), 19)
    assert resumed == full[11:]


def test_epochs_are_permutations_and_differ():
    stream = [i for i, _ in take(ResumableTrainingSampler(10, seed=0), 20)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]


def test_ranks_partition_each_epoch():
    shards = [[i for i, _ in take(ResumableTrainingSampler(8, seed=1, rank=r, world_size=2), 4)]
              for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(8))


class RandomDataset:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(1).item()


def test_sample_randomness_depends_only_on_seed_and_leaves_global_rng_alone():
    ds = SeededSampleDataset(RandomDataset())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(1, 123)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    assert ds[(1, 123)] == a
    assert ds[(1, 124)] != a


def test_two_ranks_see_the_samples_and_seeds_of_one_process_with_double_batch():
    single = take(ResumableTrainingSampler(8, seed=2), 8)
    r0 = take(ResumableTrainingSampler(8, seed=2, rank=0, world_size=2), 4)
    r1 = take(ResumableTrainingSampler(8, seed=2, rank=1, world_size=2), 4)
    interleaved = [x for pair in zip(r0, r1) for x in pair]
    assert interleaved == single
