"""PQAccumulator equals pq_compute on the same predictions written to files, on any device/ranks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panfpn.evaluation import PQAccumulator, pq_compute
from panfpn.evaluation.accumulator import pair_counts_torch
from panfpn.evaluation.id_runs import pair_counts, runs_of_ids
from pq_case_gen import CATEGORIES, assert_same, make_case, write_cases


def _feed(acc, cases, device="cpu", drop_area=False, start=0, step=1):
    for i in range(start, len(cases), step):
        gt, gs, pred, ps = cases[i]
        if drop_area:
            gs = [{k: v for k, v in s.items() if k != "area"} for s in gs]
        acc.update(torch.from_numpy(pred).int().to(device), ps,
                   torch.from_numpy(gt).int().to(device), gs, image_id=i)


@pytest.mark.parametrize("seed", [11, 12])
def test_equals_pq_compute_on_files(tmp_path, seed):
    gt_json, pred_json, cases = write_cases(tmp_path, seed, 80)
    files = pq_compute(gt_json, pred_json, workers=1)
    acc = PQAccumulator(CATEGORIES)
    _feed(acc, cases)
    assert_same(acc.compute(), files)
    # The same with categories as a dict, and areas counted from the maps.
    acc = PQAccumulator({c["id"]: {"isthing": bool(c["isthing"])} for c in CATEGORIES})
    _feed(acc, cases, drop_area=True)
    assert_same(acc.compute(), files)
    assert acc.num_images == 80
    acc.reset()
    assert acc.compute()["All"]["n"] == 0


def test_torch_counting_equals_run_counting():
    rng = np.random.default_rng(5)
    for _ in range(30):
        gt, _, pred, _ = make_case(rng)
        expected = pair_counts(runs_of_ids(gt.reshape(-1)), runs_of_ids(pred.reshape(-1)))
        got = pair_counts_torch(torch.from_numpy(gt).int(), torch.from_numpy(pred).int())
        assert got == expected
        # Independent check of one count straight from the pixels.
        g, p, c = expected[len(expected) // 2]
        assert c == int(((gt == g) & (pred == p)).sum())
        assert sum(c for _, _, c in expected) == gt.size


@pytest.mark.gpu
def test_cuda_equals_cpu(tmp_path):
    _, _, cases = write_cases(tmp_path, 13, 40)
    cpu, gpu = PQAccumulator(CATEGORIES), PQAccumulator(CATEGORIES)
    _feed(cpu, cases)
    _feed(gpu, cases, device="cuda")
    assert_same(gpu.compute(), cpu.compute())


def _rank_main(rank, world, init_file, cases, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        acc = PQAccumulator(CATEGORIES)
        _feed(acc, cases, start=rank, step=world)
        result = acc.compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_distributed_reduce_equals_single_process(tmp_path):
    rng = np.random.default_rng(21)
    cases = [make_case(rng) for _ in range(30)]
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), cases, str(tmp_path)), nprocs=2)
    single = PQAccumulator(CATEGORIES)
    _feed(single, cases)
    expected = single.compute()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        got["per_class"] = {int(k): v for k, v in got["per_class"].items()}
        assert_same(got, expected)
