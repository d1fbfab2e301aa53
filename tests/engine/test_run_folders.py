"""One test of a run folder (panfpn.engine.sweep.summary.is_run_dir) for the summaries and the Optuna
sweep folder's check (panfpn/engine/sweep/sweep_dir.py): they were two functions with two lists of
files, and a folder that only the summary counted (its metrics.jsonl) passed the check, so a new
sweep's summary mixed that run with its trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from panfpn.engine.sweep.summary import TRAINING_MARKS, find_run_dirs, is_run_dir
from panfpn.engine.sweep.sweep_dir import earlier_runs


def _record(folder: Path, subdir: str) -> None:
    (folder / subdir).mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml"):
        (folder / subdir / name).write_text("{}\n")
    (folder / subdir / "overrides.yaml").write_text("- seed=1\n")


@pytest.mark.parametrize("mark", TRAINING_MARKS)
def test_every_folder_a_summary_lists_is_a_run_for_the_sweep_folder_check(tmp_path, mark):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    (run / mark).write_text("{}")
    assert find_run_dirs([tmp_path / "sweep"]) == [run]
    assert earlier_runs(tmp_path / "sweep") == [run]


@pytest.mark.parametrize("subdir", [".hydra", ".cfg"])
def test_hydra_s_record_alone_makes_a_run_folder_for_both(tmp_path, subdir):
    run = tmp_path / "sweep" / "3"
    _record(run, subdir)
    assert find_run_dirs([tmp_path / "sweep"]) == [run] and earlier_runs(tmp_path / "sweep") == [run]
    # the record's folder itself is no run, nor the sweep folder holding the run
    assert not is_run_dir(run / subdir) and not is_run_dir(tmp_path / "sweep")
    assert is_run_dir(run, None)  # a subfolder holding only hydra's record, whatever its name


def test_a_checkpoint_alone_is_a_run_for_the_check_not_a_summary_row(tmp_path):
    """A trial would replace or continue a folder of checkpoints; a summary has nothing to show of it
    (a folder of downloaded weights below a summarised tree is not a run)."""
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    (run / "model_final.pth").write_bytes(b"PK")
    assert earlier_runs(tmp_path / "sweep") == [run]
    assert find_run_dirs([tmp_path / "sweep"]) == []
    assert is_run_dir(run, checkpoints=True) and not is_run_dir(run)
