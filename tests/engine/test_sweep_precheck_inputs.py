"""The multirun pre-check (panfpn/engine/sweep/precheck.py) on sweeps hydra users type, called on a
multirun config composed in this process (no job runs): a sweep whose jobs would start must not be
refused, one whose job would stop at its start must be."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from omegaconf import DictConfig

from panfpn.engine.sweep.precheck import refuse_bad_sweep
from panfpn.modeling.build import instantiate_model

ROOT = Path(__file__).resolve().parents[2]
VAR = "PANFPN_TEST_PRECHECK_WEIGHTS"  # never set outside these tests


@contextmanager
def multirun_config(*overrides: str) -> Iterator[DictConfig]:
    """configs/config.yaml composed as ``tools/train.py -m OVERRIDES`` composes it, before the callbacks."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3", job_name="train"):
        cfg = GlobalHydra.instance().hydra.compose_config("config", list(overrides), run_mode=RunMode.MULTIRUN,
                                                          with_log_configuration=False)
        HydraConfig.instance().set_config(cfg)
        try:
            yield cfg
        finally:
            HydraConfig.instance().cfg = None


def _refusal(capsys, *overrides: str) -> str | None:
    """stderr of a refused sweep, None when it would start."""
    with multirun_config(*overrides) as cfg:
        try:
            refuse_bad_sweep(cfg)
        except SystemExit as stop:
            assert stop.code in (1, 2)  # 2: every refusal a known input error (test_sweep_exit_status.py)
            return capsys.readouterr().err
    return None


def test_a_variable_the_jobs_get_from_hydra_job_env_set_is_set_when_they_are_checked(capsys, monkeypatch, tmp_path):
    """hydra sets ``hydra.job.env_set`` around each job: a config reading it (``${oc.env:...}``) is valid."""
    monkeypatch.delenv(VAR, raising=False)
    weights = tmp_path / "a.pth"  # a file of the model: the dry start loads it into the model
    with multirun_config("seed=1,2") as cfg:
        torch.save({"model": instantiate_model(cfg).state_dict()}, weights)
    assert _refusal(capsys, "seed=1,2", f"+hydra.job.env_set.{VAR}={weights}", f"weights=${{oc.env:{VAR}}}") is None
    assert VAR not in __import__("os").environ  # restored after the check
    err = _refusal(capsys, "seed=1,2", f"weights=${{oc.env:{VAR}}}")  # without it each job stops at its start
    assert err is not None and f"Environment variable '{VAR}' not found" in err, err


def test_jobs_run_elsewhere_are_not_judged_by_this_machine_s_files_or_environment(capsys, monkeypatch, tmp_path, caplog):
    """With a launcher that runs the jobs on other machines (Slurm), a data folder or environment
    variable this machine lacks is not a reason to refuse (docs/experiments.md: files may exist only
    where the jobs run); the basic launcher runs them here, so there it is."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    monkeypatch.delenv(VAR, raising=False)
    absent = ["data=coco_panoptic_folder", f"data.root={tmp_path / 'on_the_nodes_only'}", "seed=1,2"]
    err = _refusal(capsys, *absent)
    assert err is not None and "2 of 2" in err and "no train annotations under data.root=" in err, err
    with caplog.at_level(logging.INFO, logger="panfpn"):
        assert _refusal(capsys, "hydra/launcher=slurm", *absent) is None
        assert _refusal(capsys, "hydra/launcher=slurm", "seed=1,2", f"weights=${{oc.env:{VAR}}}") is None
    assert "not judged on this machine" in caplog.text and f"Environment variable '{VAR}'" in caplog.text
    # a value no machine accepts is still refused with the remote launcher
    err = _refusal(capsys, "hydra/launcher=slurm", "seed=1,2", "solver.base_lr=0.01,-1")
    assert err is not None and "2 of 4" in err and "must be a finite number > 0, got -1" in err, err


def test_optuna_s_grid_sampler_is_checked_on_the_values_of_its_grid(capsys):
    """hydra's ``range(0.5,1.1,0.1)`` is 0.5 ... 1.0 and the grid sampler tries just those; the
    other samplers may also draw the distribution's upper end 1.1 (the plugin's), which the key refuses."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    optuna = ["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "train.max_skipped_fraction=range(0.5,1.1,0.1)"]
    assert _refusal(capsys, *optuna, "hydra/sweeper/sampler=grid") is None
    err = _refusal(capsys, *optuna)  # TPE
    assert err is not None and "upper bound of train.max_skipped_fraction [train.max_skipped_fraction=1.1]" in err, err
    err = _refusal(capsys, "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "hydra/sweeper/sampler=grid",
                   "train.max_skipped_fraction=range(0.2,2.2,1.0)")  # the grid: 0.2, 1.2
    assert err is not None and "[train.max_skipped_fraction=1.2" in err, err


def _exit_status(capsys, *overrides: str) -> tuple[int | None, str]:
    with multirun_config(*overrides) as cfg:
        try:
            refuse_bad_sweep(cfg)
        except SystemExit as stop:
            return stop.code, capsys.readouterr().err
    return None, ""


def test_a_sweep_refused_for_input_errors_exits_2_and_one_with_a_bug_exits_1(capsys, monkeypatch):
    """The status each job would end with alone (docs/training.md: 2 for a known input error, 1 for
    any other exception): 2 when every refusal is an input error, 1 when one is not."""
    code, err = _exit_status(capsys, "solver.base_lr=0.01,-1,-2")
    assert code == 2 and "2 of 3 job configs are invalid" in err, err

    from panfpn.engine.training import start_checks

    check = start_checks.check_training_config

    def bug_in_job_1(task, overrides):
        if "seed=2" in overrides:
            raise RuntimeError("a bug, not the user's input")
        return check(task, overrides)

    monkeypatch.setattr(start_checks, "check_training_config", bug_in_job_1)
    code, err = _exit_status(capsys, "seed=1,2", "solver.base_lr=0.01,-1")
    assert code == 1 and "RuntimeError: a bug, not the user's input" in err, err
    assert "must be a finite number > 0, got -1" in err  # the input errors are still listed
