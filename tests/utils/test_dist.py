"""panfpn.utils.dist: the rank/collective helpers outside and inside a process group, and the one
device resolution (every bad ``device`` is a ConfigError naming the key and the value)."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panfpn.engine.distributed import init_distributed
from panfpn.evaluation.semantic import SemSegEvaluator
from panfpn.utils import dist as ud
from panfpn.utils.errors import ConfigError


def test_helpers_outside_a_process_group_are_rank_0_of_1():
    assert not dist.is_initialized()
    assert (ud.is_distributed(), ud.is_multiprocess()) == (False, False)
    assert (ud.get_rank(), ud.get_world_size(), ud.is_main_process()) == (0, 1, True)
    ud.barrier()  # no group: returns at once instead of raising
    assert ud.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert ud.broadcast_object([3]) == [3]
    t = torch.tensor([1.0, 2.0])
    summed = ud.all_reduce_sum(t)
    assert torch.equal(summed, t) and summed is not t  # a new tensor: callers may change it freely
    assert ud.all_reduce_mean({"loss": 2.5}, torch.device("cpu")) == {"loss": 2.5}
    assert ud.collective_device() == torch.device("cpu")


def _rank_main(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        t = torch.tensor([rank + 1.0, 10.0 * rank], dtype=torch.float64)
        summed = ud.all_reduce_sum(t)
        sem = SemSegEvaluator(num_classes=3)
        sem.update(torch.tensor([[rank, 1]]), torch.tensor([[rank, 2]]))  # rank 0: 1 of 2 right, rank 1: 1 of 2
        result = {"rank": ud.get_rank(), "world": ud.get_world_size(), "main": ud.is_main_process(),
                  "multi": ud.is_multiprocess(), "gathered": ud.all_gather_objects(f"r{rank}"),
                  "summed": summed.tolist(), "input_kept": t.tolist(),
                  "broadcast": ud.broadcast_object(f"from{rank}"), "pACC": sem.compute()["pACC"]}
        ud.barrier()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_helpers_in_a_two_process_gloo_group(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (got["rank"], got["world"], got["main"], got["multi"]) == (rank, 2, rank == 0, True)
        assert got["gathered"] == ["r0", "r1"] and got["broadcast"] == "from0"
        assert got["summed"] == [3.0, 10.0] and got["input_kept"] == [rank + 1.0, 10.0 * rank]
        # pixels over both ranks: (0,0) right, (1,2) wrong, (1,1) right, (1,2) wrong -> 2 of 4
        assert got["pACC"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda:x", "CPU", "", 0, None])
def test_unknown_device_names_the_key_and_value(name):
    with pytest.raises(ConfigError) as err:
        ud.resolve_device(name)
    assert str(err.value) == (f"config key 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', "
                              f"got {name!r}")


def test_cuda_without_cuda_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"config key 'device' is '{name}', but no CUDA device"):
            ud.resolve_device(name)
    assert ud.resolve_device("auto") == torch.device("cpu")
    assert ud.resolve_device("cpu") == torch.device("cpu")


def test_cuda_takes_the_local_rank_gpu_and_refuses_one_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ud.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert ud.resolve_device("auto") == torch.device("cuda", 0)
    assert ud.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"config key 'device' is 'cuda:2': GPU 2 .* only 2 are visible"):
        ud.resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r"config key 'device' is 'cuda': GPU 2 is asked for \(LOCAL_RANK=2\)"):
        ud.resolve_device("cuda", local_rank=2)


@pytest.mark.parametrize("name", ["tpu", "cuda"])
def test_init_distributed_raises_the_same_config_error(monkeypatch, name):
    # init_distributed and tools/export.py used to resolve the device separately, with a
    # RuntimeError here and a ConfigError there; now both go through resolve_device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=f"config key 'device'.*'{name}'"):
        init_distributed(name)


def test_one_gpu_index_for_several_processes_is_refused(monkeypatch):
    # under torchrun each rank takes its LOCAL_RANK GPU; cuda:0 would put every rank on one GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="config key 'device' is 'cuda:0', one GPU for all 2 processes"):
        init_distributed("cuda:0")
