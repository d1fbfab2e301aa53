"""Multi-process training and evaluation against Detectron2's conventions, looking for silently wrong
results: the sample stream of N ranks is the one of a single process with the same global batch
(also when the dataset size does not divide by N), gradients are averaged (not summed) over ranks,
resume continues the 2-process stream exactly, only rank 0 writes the run folder (hydra's job log
included; another rank's own hydra folder is removed), evaluation of an odd image count writes what
one process writes (JSON, PNGs, metrics, overlays, the report's lowest-PQ images), and a failure on
rank 1 ends the job with rank 1's error in job_status.json. torchrun --nproc_per_node 2 with gloo
on CPU, processes killed with their group (process_helpers)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from config_helpers import compose_config
from panfpn.data.build import synthetic_dataset
from panfpn.data.sampler import ResumableTrainingSampler
from panfpn.engine.distributed import job_log_on_rank_0_only, remove_hydra_only_folder
from panfpn.engine import rank_errors
from panfpn.engine.training.checkpoint import load_training_checkpoint
from panfpn.evaluation.rank_images import first_over_ranks, lowest_over_ranks
from panfpn.evaluation.worst_images import ImageScore, WorstImages
from panfpn.modeling.build import build_model
from process_helpers import run as run_in_group

ROOT = Path(__file__).resolve().parents[2]
# 64x64 synthetic scenes, GroupNorm (BatchNorm statistics are per process on CPU: no SyncBN with
# gloo), constant lr: 1 process with batch 2 and 2 processes with batch 1 take the same steps
# up to the per-process RPN / RoI sampling and per-process loss normalisation.
ARGS = ["data.train.num_images=8", "data.train.height=64", "data.train.width=64",
        "data.train.transforms.transforms.0.short_edge_lengths=[64]",
        "data.train.transforms.transforms.0.max_size=128", "data.val.num_images=5", "data.val.height=64",
        "data.val.width=64", "data.num_workers=0", "solver=synthetic_sgd", "solver.schedule.warmup_iters=0",
        "solver.schedule.steps=[]", "model.backbone.norm=gn", "train.log_period=1",
        "train.checkpoint_period=2", "train.progress_bar=false", "train.eval_period=-1"]
DATA_ARGS = ARGS[:9]


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


# Per-image PQs of 7 images in dataset order, with ties across the two ranks' shards (4 + 3).
PQS = [0.5, 0.2, 0.9, 0.2, 0.5, 0.2, 0.1]


def _pictures_rank_main(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = range(0, 4) if rank == 0 else range(4, 7)  # contiguous, as ShardSampler gives them
        worst = WorstImages({1: {"isthing": 1}}, k=3)
        for i in shard:
            worst.offer(ImageScore(i, PQS[i]), lambda i=i: np.full((2, 2, 3), i, np.uint8))
        lowest = lowest_over_ranks(worst.worst(), 3)
        first = first_over_ranks([f"overlay{i}" for i in shard][:5], 5)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({
            "lowest": [[s.image_id, s.pq, int(s.overlay[0, 0, 0])] for s in lowest], "first": first}))
    finally:
        dist.destroy_process_group()


def test_pictures_picked_over_two_ranks_are_the_ones_of_one_process(tmp_path):
    """The report's k lowest-PQ images (ties to the earlier image) and the first n overlays, picked
    over 2 gloo ranks, equal what one process picks from all the images, overlays included."""
    single = WorstImages({1: {"isthing": 1}}, k=3)
    for i, pq in enumerate(PQS):
        single.offer(ImageScore(i, pq), lambda i=i: np.full((2, 2, 3), i, np.uint8))
    expected = [[s.image_id, s.pq, int(s.overlay[0, 0, 0])] for s in single.worst()]
    assert [e[0] for e in expected] == [6, 1, 3]  # the 0.2 on rank 1 (image 5) loses the tie
    mp.spawn(_pictures_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["lowest"] == expected
        assert got["first"] == [f"overlay{i}" for i in range(5)]


@pytest.mark.parametrize("env,kept", [({"RANK": "1"}, False), ({"SLURM_PROCID": "2"}, False),
                                      ({"RANK": "0", "SLURM_PROCID": "3"}, True), ({}, True)])
def test_hydra_job_log_is_written_by_rank_0_alone(tmp_path, monkeypatch, env, kept):
    for name in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "train.log")
    root.addHandler(handler)
    try:
        job_log_on_rank_0_only()
        assert (handler in root.handlers) == kept
    finally:
        root.removeHandler(handler)
        handler.close()


def test_a_ranks_own_hydra_folder_is_removed_only_when_hydra_alone_wrote_there(tmp_path):
    def folder(name, extra=None):
        path = tmp_path / name
        (path / ".hydra").mkdir(parents=True)
        for yaml in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (path / ".hydra" / yaml).write_text("a: 1\n")
        (path / "train.log").write_text("")
        if extra:
            (path / extra[0]).write_text(extra[1])
        return path

    assert remove_hydra_only_folder(folder("rank1")) and not (tmp_path / "rank1").exists()
    for name, extra in [("logged", ("train.log", "a line\n")), ("data", ("model_final.pth", "x"))]:
        assert not remove_hydra_only_folder(folder(name, extra)) and (tmp_path / name / ".hydra").is_dir()
    assert not remove_hydra_only_folder(tmp_path / "missing")


def _as_rank(monkeypatch, rank):
    monkeypatch.setattr(rank_errors.du, "is_multiprocess", lambda: True)
    monkeypatch.setattr(rank_errors.du, "get_world_size", lambda: 2)
    monkeypatch.setattr(rank_errors.du, "get_rank", lambda: rank)
    monkeypatch.setattr(rank_errors.du, "is_main_process", lambda: rank == 0)


def test_rank_0_names_another_ranks_error_only_for_a_failed_collective(tmp_path, monkeypatch):
    """Rank 1 leaves its error; rank 0's 'Connection closed by peer' becomes OtherRankFailedError
    naming it, but an error of rank 0's own (all ranks raise NonFiniteLossError together) keeps its
    type, and a file of an earlier run is not read."""
    _as_rank(monkeypatch, 1)
    with pytest.raises(ValueError), rank_errors.told_to_rank_0(tmp_path):
        raise ValueError("bad image 7")
    _as_rank(monkeypatch, 0)
    with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
        raise RuntimeError("Connection closed by peer")
    assert str(told.value) == "rank 1 failed: ValueError: bad image 7 (then rank 0: RuntimeError: Connection closed by peer)"
    with pytest.raises(FloatingPointError), rank_errors.told_to_rank_0(tmp_path):
        raise FloatingPointError("non-finite loss at iteration 3")
    record = json.loads(rank_errors.error_file(tmp_path, 1).read_text())
    record["time"] -= 3600  # written by an earlier run in this folder
    rank_errors.error_file(tmp_path, 1).write_text(json.dumps(record))
    with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
        raise RuntimeError("Connection closed by peer")
    assert told.value.summary == f"another rank {rank_errors.GONE}"  # not the earlier run's bad image 7


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _launch(tool, args, *, nproc=1, env=None, check=True, timeout=240):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = run_in_group([*launcher, str(ROOT / "tools" / tool), *args], env=env or _env(), capture_output=True,
                        text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """From the same initial weights: 1 process x 2 images for 2 iterations; 2 processes x 1 image
    for 4 iterations straight; the same in two halves (2 iterations, then resume=true to 4)."""
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    init = build_model(compose_config([*ARGS, "weights=null"], output_dir=root / "init")).state_dict()
    torch.save({"model": init}, root / "init.pth")
    args = [*ARGS, f"weights={root / 'init.pth'}"]
    _launch("train.py", [*args, "data.batch_size=2", "solver.max_iter=2", f"hydra.run.dir={root / 'one'}"])
    two = [*args, "data.batch_size=1", "solver.max_iter=4"]
    _launch("train.py", [*two, f"hydra.run.dir={root / 'two'}"], nproc=2)
    _launch("train.py", [*args, "data.batch_size=1", "solver.max_iter=2", f"hydra.run.dir={root / 'halves'}"], nproc=2)
    _launch("train.py", [*two, "resume=true", f"hydra.run.dir={root / 'halves'}"], nproc=2)
    return root, {k: v.clone() for k, v in init.items()}


@pytest.mark.slow
def test_two_processes_average_gradients_and_keep_the_lr_of_one_process(runs):
    """After 2 steps each part of the model moved like with one process and the same global batch:
    |change| within 10 % (measured: 0.3-4 %; gradients summed over ranks instead of averaged, or a
    per-process batch taken for the global one, doubles it), the changes themselves within 35 %
    (measured: semantic head 6 %, RPN 11 %, backbone 18 %, RoI heads 5 %: per-process RPN / RoI
    sampling and loss normalisation, as Detectron2's). The lr is the same at every iteration."""
    root, init = runs
    one = load_training_checkpoint(root / "one" / "model_final.pth")["model"]
    two = load_training_checkpoint(root / "two" / "model_0000002.pth")["model"]
    assert list(two) == list(one)  # a single-process state dict: no 'module.' prefixes
    for part in ("backbone", "semantic_head", "rpn", "roi_heads"):
        names = [k for k in one if k.startswith(part + ".") and one[k].is_floating_point()]
        d1 = torch.cat([(one[k] - init[k]).flatten() for k in names])
        d2 = torch.cat([(two[k] - init[k]).flatten() for k in names])
        assert d1.norm() > 0
        assert float(d2.norm() / d1.norm()) == pytest.approx(1.0, abs=0.1), part
        assert float((d2 - d1).norm() / d1.norm()) < 0.35, part
    lr_one = [r["lr"] for r in _train_records(root / "one")]
    lr_two = [r["lr"] for r in _train_records(root / "two")]
    assert lr_one == lr_two[:2] == [0.01, 0.01]  # base_lr 0.02 for 4 images, global batch 2 both ways


@pytest.mark.slow
def test_two_process_resume_continues_exactly_and_rank_0_alone_writes(runs):
    """Stopped at iteration 2 and resumed under 2 processes: the same weights bit for bit and the
    same logged losses as the uninterrupted run (the sampler position and both ranks' RNG states
    restored); every iteration logged once, one TensorBoard writer, no rank's duplicate files."""
    root, _ = runs
    full = load_training_checkpoint(root / "two" / "model_final.pth")
    resumed = load_training_checkpoint(root / "halves" / "model_final.pth")
    assert full["iteration"] == resumed["iteration"] == 4 and len(full["rng"]) == 2
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    straight, halves = _train_records(root / "two"), _train_records(root / "halves")
    assert [r["iter"] for r in straight] == [r["iter"] for r in halves] == [1, 2, 3, 4]
    assert [r["loss/total"] for r in halves] == [r["loss/total"] for r in straight]
    assert len(list((root / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    log = (root / "two" / "log.txt").read_text()
    assert log.count("iter 4/4") == 1 and log.count("saved checkpoint") == 2
    assert not list((root / "two").glob("rank*_error.json"))
    # the start check's warning (train.eval_period=-1): once, in log.txt (rank 0's); it went to hydra's job
    # log, where rank 1's hydra appended it a second time, then (job_log_on_rank_0_only) to it alone
    assert log.count("needs an evaluation but train.eval_period=-1") == 1
    job_log = (root / "two" / "train.log").read_text().splitlines()
    assert len({line.split("]", 1)[1] for line in job_log}) == len(job_log), job_log


@pytest.mark.slow
def test_a_bad_image_on_rank_1_ends_the_job_and_rank_0_reports_it(tmp_path):
    """Rank 1's first image is truncated: the job ends within seconds (no collective left waiting)
    and job_status.json / log.txt, which rank 0 writes, name rank 1's error: the file and the image
    id. Before, they said only 'RuntimeError: ... Connection closed by peer' (rank 0's next
    collective), the cause being on rank 1's stderr alone."""
    cache = tmp_path / "cache"
    train = synthetic_dataset("train", num_images=8, seed=0, height=64, width=64, cache_dir=str(cache),
                              filter_empty=True)  # what data.train builds in the job from this cache
    index = next(iter(ResumableTrainingSampler(len(train), seed=0, rank=1, world_size=2)))[0]
    record = train.records[index]
    image = train.image_root / record.file_name
    image.write_bytes(image.read_bytes()[:200])
    run = tmp_path / "run"
    started = time.monotonic()
    done = _launch("train.py", [*ARGS, "data.batch_size=1", "solver.max_iter=3", f"hydra.run.dir={run}"], nproc=2,
                   env=_env(PANFPN_CACHE=str(cache)), check=False, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 90, done.stderr[-3000:]
    status = json.loads((run / "job_status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith(f"OtherRankFailedError: rank 1 failed: BadImageError: image id "
                                      f"{record.image_id} of "), status["error"]
    assert image.name in status["error"] and "(then rank 0: " in status["error"]
    assert f"rank 1 failed: BadImageError: image id {record.image_id}" in (run / "log.txt").read_text()
    assert not (run / "model_final.pth").exists()
    # Both ranks exit 2, rank 0 with one line and no traceback (before: hydra's traceback of an
    # OtherRankFailedError and exit 1); torchrun exits 1, its report giving each rank's exit code.
    lines = [line for line in done.stderr.splitlines() if line.startswith("tools/train.py:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"tools/train.py: rank 1 failed: BadImageError: image id {record.image_id} of "), done.stderr[-3000:]
    assert "Error executing job" not in done.stderr and "OtherRankFailedError" not in done.stderr, done.stderr[-3000:]
    exits = dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", done.stderr))
    assert done.returncode == 1 and exits == {"0": "2", "1": "2"}, done.stderr[-3000:]


def _worst_section(page: str) -> str:
    start = page.index('<div id="worst">')
    return page[start:page.index("</div>", start)]


@pytest.mark.slow
def test_two_process_eval_of_5_images_writes_what_one_process_writes(runs, tmp_path):
    """5 validation images on 2 ranks (3 + 2): the same panoptic JSON (images in dataset order), the
    same PNG bytes, the same metrics, and the same pictures: the first 4 overlays and the report's
    lowest-PQ images. Before, those two came from rank 0's 3 images only (3 overlays; the report
    showed 3 of the 5 images)."""
    root, _ = runs
    args = [*DATA_ARGS, "eval.max_images=null", "model.merge.score_thresh=0.0", "model.merge.stuff_area=1",
            "eval.save_predictions=true", "eval.save_overlays=4", f"weights={root / 'two' / 'model_final.pth'}"]
    _launch("eval.py", [*args, f"hydra.run.dir={tmp_path / 'one'}"])
    # Each rank's hydra gets its own folder, as when ranks start in different seconds
    # (outputs/<date>/<time>): all is written in rank 0's, and rank 1's is removed.
    _launch("eval.py", [*args, f"hydra.run.dir={tmp_path}/two_${{oc.env:LOCAL_RANK}}"], nproc=2)
    one, two = tmp_path / "one", tmp_path / "two_0"
    assert not (tmp_path / "two_1").exists()
    pred_one = json.loads((one / "predictions" / "panoptic_pred.json").read_text())
    assert [i["id"] for i in pred_one["images"]] == [1, 2, 3, 4, 5]
    assert json.loads((two / "predictions" / "panoptic_pred.json").read_text()) == pred_one
    pngs = sorted(p.name for p in (one / "predictions" / "panoptic_pred").iterdir())
    assert len(pngs) == 5 and sorted(p.name for p in (two / "predictions" / "panoptic_pred").iterdir()) == pngs
    for name in pngs:
        assert (two / "predictions" / "panoptic_pred" / name).read_bytes() == \
            (one / "predictions" / "panoptic_pred" / name).read_bytes()
    res_one, res_two = (json.loads((d / "eval_results.json").read_text()) for d in (one, two))
    assert res_two["num_images"] == 5
    assert {k: res_two[k] for k in ("panoptic", "sem_seg", "segm", "bbox")} == \
        {k: res_one[k] for k in ("panoptic", "sem_seg", "segm", "bbox")}
    overlays = sorted(p.name for p in (one / "overlays").iterdir())
    assert overlays == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert sorted(p.name for p in (two / "overlays").iterdir()) == overlays
    for name in overlays:
        assert (two / "overlays" / name).read_bytes() == (one / "overlays" / name).read_bytes()
    # hydra's job log: rank 0's alone (each line twice before); the start warnings (the merge keys
    # differ from the checkpoint's) now go to log.txt, written by rank 0 alone: each once
    assert (two / "eval.log").read_text().splitlines() == (one / "eval.log").read_text().splitlines()
    warnings = [[line.split("] ", 1)[1] for line in (d / "log.txt").read_text().splitlines() if "WARNING]" in line]
                for d in (one, two)]
    assert warnings[0] == warnings[1] and any("model.merge.score_thresh" in w for w in warnings[0]), warnings
    worst = _worst_section((one / "report.html").read_text(encoding="utf-8"))
    assert worst.count("<figure") == 5
    assert _worst_section((two / "report.html").read_text(encoding="utf-8")) == worst
