"""An Optuna sweep into a folder that holds runs (panfpn/engine/sweep/sweep_dir.py, called by the
multirun pre-check): hydra-optuna-sweeper numbers its trials from 0 at each launch, so launched
again into its own ``hydra.sweep.dir`` its trial k overwrote run k and its optimization_results.yaml
(a warning only), into a basic sweep's folder it overwrote jobs 0..n-1 and its summary mixed the
two sweeps, and a trial folder another training holds failed its trial (a traceback) after the
trials before it trained. Each is refused before the first trial, naming hydra.sweep.dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from process_helpers import run_lock_held
from test_sweep_check import _train_multirun
from tests.engine.conftest import TINY

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")

FAST = [*TINY, "solver.max_iter=2", "solver.schedule.steps=[1]", "solver.schedule.warmup_iters=1",
        "train.eval_period=-1", "train.checkpoint_period=100", "train.num_vis_images=0",
        "train.objective=loss/total", "train.objective_direction=minimize"]
OPTUNA = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
          "hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=0", "solver.base_lr=interval(0.001,0.02)"]
ADVICE = "give this sweep a new hydra.sweep.dir"


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory) -> Path:
    """A real 2-trial Optuna sweep of 2-iteration tiny trainings (folders 0 and 1, optimization_results.yaml)."""
    root = tmp_path_factory.mktemp("optuna")
    proc = _train_multirun(root, *FAST, *OPTUNA, f"hydra.sweep.dir={root / 'sweep'}", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "sweep"


def _fake_sweep(tmp_path: Path, jobs: int, optuna: bool = True, subdir: str = ".hydra") -> Path:
    """A sweep folder holding what a finished sweep's jobs leave (the files the check looks at:
    hydra's record in ``subdir``, job_status.json, a checkpoint) and, with ``optuna``, its
    optimization_results.yaml."""
    sweep = tmp_path / "sweep"
    for job in range(jobs):
        folder = sweep / str(job)
        (folder / subdir).mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml"):
            (folder / subdir / name).write_text("{}\n")
        (folder / subdir / "overrides.yaml").write_text(f"- seed={job}\n")
        (folder / "job_status.json").write_text('{"status": "done"}')
        (folder / "model_final.pth").write_bytes(b"PK")
        (folder / "last_checkpoint").write_text("model_final.pth")
    if optuna:
        (sweep / "optimization_results.yaml").write_text("name: optuna\n")
    return sweep


@pytest.mark.slow
def test_an_optuna_sweep_launched_again_into_its_folder_is_refused(optuna_sweep, tmp_path):
    """Before: both folders' runs and optimization_results.yaml were replaced by the new trials'
    (``resume=false`` warned, per trial, as it overwrote them)."""
    sweep = Path(shutil.copytree(optuna_sweep, tmp_path / "sweep"))
    kept = {p: p.read_bytes() for p in (sweep / "0" / "model_final.pth", sweep / "1" / "metrics.jsonl",
                                        sweep / "optimization_results.yaml")}
    proc = _train_multirun(tmp_path, *FAST, *OPTUNA, "hydra.sweeper.sampler.seed=1", f"hydra.sweep.dir={sweep}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "training starts" not in out, out[-3000:]
    assert (f"sweep refused before any job started: hydra.sweep.dir {sweep} holds the runs of an earlier sweep "
            f"(2: 0, 1) and its optimization_results.yaml: ") in proc.stderr, proc.stderr
    assert ADVICE in proc.stderr and "with resume=true" in proc.stderr
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_an_optuna_sweep_resumed_in_its_folder_is_refused(capsys, tmp_path):
    """``resume=true``: trial k's newly sampled values would continue run k (another lr's)."""
    sweep = _fake_sweep(tmp_path, 2)
    with pytest.raises(SystemExit) as stop:
        _refused_optuna(*FAST, *OPTUNA, "resume=true", f"hydra.sweep.dir={sweep}")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"hydra.sweep.dir {sweep} holds the runs of an earlier sweep (2: 0, 1) and its optimization_results." \
           "yaml: " in err and ADVICE in err, err


def test_an_optuna_sweep_into_a_basic_sweeps_folder_is_refused(capsys, tmp_path):
    """Jobs 0-2 of a basic sweep made with ``hydra.output_subdir=.cfg``: before, trials 0 and 1
    replaced jobs 0 and 1, job 2 stayed, and the summary's three rows named the basic job 2 best."""
    sweep = _fake_sweep(tmp_path, 3, optuna=False, subdir=".cfg")
    with pytest.raises(SystemExit):
        _refused_optuna(*FAST, *OPTUNA, "hydra.output_subdir=.cfg", f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert f"hydra.sweep.dir {sweep} holds the runs of an earlier sweep (3: 0, 1, 2): " in err, err


def test_records_alone_are_runs(capsys, tmp_path):
    """A job folder with nothing but hydra's record (a job killed as it started) is a run; a folder
    with the summary files and no run folder is not."""
    sweep = tmp_path / "sweep"
    (sweep / "summary.json").parent.mkdir()
    (sweep / "summary.json").write_text("{}")
    assert _refused_optuna(*FAST, *OPTUNA, f"hydra.sweep.dir={sweep}") is None
    (sweep / "0" / ".cfg").mkdir(parents=True)
    for name in ("overrides.yaml", "hydra.yaml"):
        (sweep / "0" / ".cfg" / name).write_text("[]\n")
    with pytest.raises(SystemExit):
        _refused_optuna(*FAST, *OPTUNA, f"hydra.sweep.dir={sweep}")
    assert f"hydra.sweep.dir {sweep} holds the runs of an earlier sweep (1: 0): " in capsys.readouterr().err


def test_an_optuna_sweep_whose_trial_folder_a_live_training_holds_is_refused(capsys, tmp_path):
    """Before: trial 0 trained, then trial 1 failed with a RunDirBusyError traceback."""
    folder = tmp_path / "sweep" / "1"
    with run_lock_held(folder) as proc:
        with pytest.raises(SystemExit):
            _refused_optuna(*FAST, *OPTUNA, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    err = capsys.readouterr().err
    assert (f"hydra.sweep.dir {tmp_path / 'sweep'} holds a run folder {folder}, in use by a live training (pid "
            f"{proc.pid} on host ") in err, err
    assert ADVICE in err


def test_an_optuna_sweep_into_a_new_folder_is_not_refused_for_its_folder(capsys, tmp_path):
    assert _refused_optuna(*FAST, *OPTUNA, f"hydra.sweep.dir={tmp_path / 'new'}") is None
    (tmp_path / "file").write_text("not a folder")  # before: a FileExistsError traceback from hydra
    with pytest.raises(SystemExit):
        _refused_optuna(*FAST, *OPTUNA, f"hydra.sweep.dir={tmp_path / 'file'}")
    assert f"hydra.sweep.dir {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def _refused_optuna(*overrides: str) -> None:
    """The pre-check of ``tools/train.py -m OVERRIDES`` in this process: raises SystemExit when refused."""
    from test_sweep_precheck_inputs import multirun_config

    from panfpn.engine.sweep.precheck import refuse_bad_sweep

    with multirun_config(*overrides) as cfg:
        refuse_bad_sweep(cfg)
