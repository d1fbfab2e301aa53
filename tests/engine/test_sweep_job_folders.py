"""A multirun's job folders, checked before job 0 trains (panfpn/engine/sweep/precheck.py, the dry
start's ``check_job_folder``): two jobs whose folders are one (``hydra.sweep.subdir`` or
``output_dir`` not telling them apart: with ``resume=true`` the later job continues the earlier
one's run, without it it replaces it), a job folder that a live training holds (its ``train.lock``:
the job would fail with RunDirBusyError after the jobs before it trained) and a job folder path
that is a file (hydra cannot make the folder: a FileExistsError traceback) refuse the sweep."""

from __future__ import annotations

import pytest

from process_helpers import run_lock_held
from test_sweep_dry_start import _refused
from tests.engine.conftest import TINY

NO_EVAL = ["train.eval_period=-1", "train.checkpoint_period=100"]


@pytest.mark.parametrize("resume", ["true", "false"])
def test_two_jobs_sharing_a_folder_stop_the_sweep(capsys, tmp_path, resume):
    sweep = tmp_path / "sweep"
    lines = _refused(capsys, *TINY, *NO_EVAL, f"resume={resume}", "seed=1,2,3", f"hydra.sweep.dir={sweep}",
                     "hydra.sweep.subdir=shared")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 1", "job 2"], lines
    assert f"output_dir {sweep / 'shared'} is job 0's folder too" in lines[0], lines
    assert "${hydra.job.num}" in lines[0], lines


def test_output_dir_given_to_every_job_stops_the_sweep(capsys, tmp_path):
    lines = _refused(capsys, *TINY, *NO_EVAL, "resume=true", "seed=1,2", f"output_dir={tmp_path / 'run'}")
    assert lines is not None and len(lines) == 1 and lines[0].startswith("job 1 [seed=2]: "), lines
    assert f"output_dir {tmp_path / 'run'} is job 0's folder too" in lines[0], lines


def test_distinct_folders_of_a_subdir_key_pass(capsys, tmp_path):
    """A subdir naming the swept key tells the jobs apart: no refusal."""
    assert _refused(capsys, *TINY, *NO_EVAL, "seed=1,2", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=s${seed}") \
        is None


def test_a_job_folder_held_by_a_live_training_stops_the_sweep(capsys, tmp_path):
    folder = tmp_path / "sweep" / "1"
    with run_lock_held(folder) as proc:
        lines = _refused(capsys, *TINY, *NO_EVAL, "resume=true", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
        lock = (folder / "train.lock").read_bytes()
    assert lines is not None and len(lines) == 1, lines
    assert lines[0].startswith(f"job 1 [seed=2]: RunDirBusyError: {folder} is in use by another training: "
                               f"pid {proc.pid} on host "), lines
    assert b'"pid": %d' % proc.pid in lock  # the holder's record is untouched by the check
    # once the holder is gone (killed: its record stays behind), the folder is free again
    assert _refused(capsys, *TINY, *NO_EVAL, "resume=true", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}") is None


def test_a_job_folder_path_that_is_a_file_stops_the_sweep(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "1").write_text("not a folder")
    lines = _refused(capsys, *TINY, *NO_EVAL, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert lines is not None and len(lines) == 1, lines
    assert lines[0].startswith(f"job 1 [seed=2]: FileExistsError: output_dir {sweep / '1'} is a file"), lines
