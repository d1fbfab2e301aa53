"""A sweep re-launched with ``resume=true`` in the same ``hydra.sweep.dir`` (panfpn/engine/sweep/relaunch.py):
each job's folder must hold a run made with the job's values of the keys this launch sweeps (its
``.hydra/overrides.yaml``), else job k would continue another config's run under its own (resume only
warns at solver changes) and the summary would pair each folder with the wrong config."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from test_sweep_check import _refusal_lines, _train_multirun
from test_sweep_dry_start import _refused
from tests.engine.conftest import TINY

NO_EVAL = ["train.eval_period=-1", "train.checkpoint_period=100"]  # one checkpoint: model_final.pth
GRID = ["seed=1", "solver.base_lr=0.01,0.02"]


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory) -> Path:
    """The folder of a real sweep ``seed=1 solver.base_lr=0.01,0.02`` of two 4-iteration tiny trainings
    (folders 0 and 1, each with model_final.pth and hydra's record)."""
    root = tmp_path_factory.mktemp("first")
    sweep = root / "sweep"
    proc = _train_multirun(root, *TINY, *NO_EVAL, *GRID, f"hydra.sweep.dir={sweep}", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return sweep


def _copy(first_sweep: Path, tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    shutil.copytree(first_sweep, sweep)
    return sweep


def _train_iters(folder: Path) -> list[int]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line["iter"] for line in lines if line["kind"] == "train"]


@pytest.mark.slow
def test_a_relaunch_whose_grid_changed_is_refused_before_anything_trains(first_sweep, tmp_path):
    """``solver.base_lr=0.005,0.01,0.02``: job 0 (lr 0.005) would continue folder 0's lr-0.01 run, job 1
    folder 1's lr-0.02 run; job 2's folder is empty (it would start from scratch)."""
    sweep = _copy(first_sweep, tmp_path)
    finals = {job: (sweep / job / "model_final.pth").stat().st_mtime_ns for job in ("0", "1")}
    proc = _train_multirun(tmp_path, *TINY, *NO_EVAL, "seed=1", "solver.base_lr=0.005,0.01,0.02", "resume=true",
                           f"hydra.sweep.dir={sweep}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "training starts" not in out
    assert "sweep refused before any job started: 2 of 3 job configs are invalid" in proc.stderr, proc.stderr
    lines = _refusal_lines(proc.stderr)
    assert [line.split(" [")[0] for line in lines] == ["job 0", "job 1"], proc.stderr
    assert lines[0].startswith(f"job 0 [solver.base_lr=0.005]: resume=true would continue the run in output_dir "
                               f"{sweep / '0'} (checkpoint model_final.pth) made with other values of the keys this "
                               "sweep varies: solver.base_lr=0.01 there, solver.base_lr=0.005 in this job"), lines
    assert "solver.base_lr=0.02 there, solver.base_lr=0.01 in this job" in lines[1], lines
    assert "in its order" in lines[0] and "new hydra.sweep.dir" in lines[0]
    assert {job: (sweep / job / "model_final.pth").stat().st_mtime_ns for job in ("0", "1")} == finals
    assert not (sweep / "2").exists()
    assert [len(_train_iters(sweep / job)) for job in ("0", "1")] == [4, 4]  # nothing trained further


@pytest.mark.slow
def test_the_same_grid_relaunched_with_a_larger_max_iter_continues_every_job(first_sweep, tmp_path):
    """Keys given one value for every job (``solver.max_iter=6``, ``resume=true``) are not compared; the
    swept ``solver.base_lr`` matches each folder's record: each job continues its own run."""
    sweep = _copy(first_sweep, tmp_path)
    proc = _train_multirun(tmp_path, *TINY, *NO_EVAL, *GRID, "solver.max_iter=6", "resume=true",
                           f"hydra.sweep.dir={sweep}", timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for job, lr in (("0", "0.01"), ("1", "0.02")):
        assert (f"sweep check: {sweep / job} holds a run made with this job's solver.base_lr={lr}: resume=true "
                "continues it") in out, out[-3000:]
        assert _train_iters(sweep / job) == [1, 2, 3, 4, 5, 6]
        assert "at iteration 4" in (sweep / job / "log.txt").read_text()
        assert f"solver.base_lr={lr}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()


def test_a_key_new_to_the_sweep_is_refused(capsys, first_sweep, tmp_path):
    """``solver.weight_decay=choice(0.0002)`` (one value, still a sweep): the records of folders 0 and 1
    name no weight decay, so which one their runs used is not the record's: both jobs are refused."""
    sweep = _copy(first_sweep, tmp_path)
    lines = _refused(capsys, *TINY, *NO_EVAL, *GRID, "solver.weight_decay=choice(0.0002)", "resume=true",
                     f"hydra.sweep.dir={sweep}")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 0", "job 1"], lines
    assert "other values of the keys this sweep varies: no solver.weight_decay there, " \
           "solver.weight_decay=0.0002 in this job" in lines[0], lines
    assert "solver.base_lr" not in lines[0].partition("varies:")[2].partition("(its record")[0], lines


def test_a_folder_with_checkpoints_and_no_record_is_resumed_with_a_warning(capsys, caplog, first_sweep, tmp_path):
    """A run copied into folder 0 without hydra's record: which config made it is not known (warned);
    folder 1's record still refuses lr 0.01 there."""
    sweep = _copy(first_sweep, tmp_path)
    shutil.rmtree(sweep / "0" / ".hydra")
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        lines = _refused(capsys, *TINY, *NO_EVAL, "seed=1", "solver.base_lr=0.01,0.01", "resume=true",
                         f"hydra.sweep.dir={sweep}")
    assert lines is not None and len(lines) == 1 and lines[0].startswith("job 1 ["), lines
    assert "solver.base_lr=0.02 there, solver.base_lr=0.01 in this job" in lines[0], lines
    assert any(f"{sweep / '0'} holds checkpoints (model_final.pth) but no hydra record" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def _move_records(sweep: Path, subdir: str) -> None:
    """Each job's hydra record moved to ``subdir``, as ``hydra.output_subdir=SUBDIR`` writes it
    (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``; checked by hand with a real sweep)."""
    for job in ("0", "1"):
        (sweep / job / ".hydra").rename(sweep / job / subdir)


def test_a_record_under_a_non_default_output_subdir_refuses_a_changed_grid(capsys, caplog, first_sweep, tmp_path):
    """``hydra.output_subdir=.cfg``: the records are in each job's ``.cfg``; they were not looked for
    there (a warning, and folder k's run continued under job k's other lr)."""
    sweep = _copy(first_sweep, tmp_path)
    _move_records(sweep, ".cfg")
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        lines = _refused(capsys, *TINY, *NO_EVAL, "seed=1", "solver.base_lr=0.005,0.01,0.02", "resume=true",
                         "hydra.output_subdir=.cfg", f"hydra.sweep.dir={sweep}")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 0", "job 1"], lines
    assert "solver.base_lr=0.01 there, solver.base_lr=0.005 in this job (its record .cfg/overrides.yaml: " in lines[0]
    assert not any("no hydra record" in r.getMessage() for r in caplog.records)


def test_a_record_under_a_non_default_output_subdir_resumes_the_same_grid(capsys, caplog, first_sweep, tmp_path):
    sweep = _copy(first_sweep, tmp_path)
    _move_records(sweep, ".cfg")
    with caplog.at_level(logging.INFO, logger="panfpn"):
        assert _refused(capsys, *TINY, *NO_EVAL, *GRID, "resume=true", "hydra.output_subdir=.cfg",
                        f"hydra.sweep.dir={sweep}") is None
    messages = [r.getMessage() for r in caplog.records]
    for job, lr in (("0", "0.01"), ("1", "0.02")):
        assert f"sweep check: {sweep / job} holds a run made with this job's solver.base_lr={lr}: resume=true " \
               "continues it" in messages, messages
    assert not any("no hydra record" in m for m in messages), messages


def test_a_record_under_another_output_subdir_than_this_launch_is_found(capsys, first_sweep, tmp_path):
    """The runs were made with ``hydra.output_subdir=.cfg``, the re-launch keeps the default ``.hydra``:
    the record is found in the job folder's subfolder holding hydra's files."""
    sweep = _copy(first_sweep, tmp_path)
    _move_records(sweep, ".cfg")
    lines = _refused(capsys, *TINY, *NO_EVAL, "seed=1", "solver.base_lr=0.02,0.01", "resume=true",
                     f"hydra.sweep.dir={sweep}")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 0", "job 1"], lines
    assert "solver.base_lr=0.01 there, solver.base_lr=0.02 in this job (its record .cfg/overrides.yaml: " in lines[0]


def test_a_record_written_into_the_job_folder_itself_is_found(capsys, first_sweep, tmp_path):
    """``hydra.output_subdir=.``: hydra's files lie in the job folder itself; they were not looked
    for there (the runs counted as made without a record, and a changed grid was only warned of)."""
    sweep = _copy(first_sweep, tmp_path)
    for job in ("0", "1"):
        for record in (sweep / job / ".hydra").iterdir():
            record.rename(sweep / job / record.name)
        (sweep / job / ".hydra").rmdir()
    lines = _refused(capsys, *TINY, *NO_EVAL, "seed=1", "solver.base_lr=0.02,0.01", "resume=true",
                     f"hydra.sweep.dir={sweep}")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 0", "job 1"], lines
    assert "solver.base_lr=0.01 there, solver.base_lr=0.02 in this job (its record overrides.yaml: " in lines[0]
