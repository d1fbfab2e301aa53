"""An Optuna study continued across launches through its storage (docs/experiments.md, Optuna): each
launch gets a new ``hydra.sweep.dir`` (an earlier sweep's folder is refused) and the study's trials
come from the database, as optuna documents for resuming a study."""

from __future__ import annotations

import sys

import pytest
import yaml

from process_helpers import run
from test_sweep_summary import ROOT, SWEEP_TINY, _env

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed "
                    "(pip install 'panfpn[sweep]')")


@pytest.mark.slow
def test_an_optuna_study_continues_in_a_new_sweep_folder_through_its_storage(tmp_path, tiny_args):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [*tiny_args, *SWEEP_TINY, "eval.compute_ap=false", "train.objective=sem_seg/mIoU", "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", "hydra.sweeper.direction=maximize",
            "solver.base_lr=interval(0.005,0.02)", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=lr"]
    for launch in ("first", "second"):
        proc = run([sys.executable, str(ROOT / "tools/train.py"), "-m", *args, f"hydra.sweep.dir={tmp_path / launch}"],
                   env=_env(), capture_output=True, timeout=600)
        assert proc.returncode == 0, (launch, proc.stdout[-3000:], proc.stderr[-3000:])
    study = optuna.load_study(study_name="lr", storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # the second launch's best is over both launches' trials: the study went on
    best = yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t.value for t in trials))
