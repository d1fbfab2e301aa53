"""A multirun re-launched with ``resume=true`` (each job continues in its own job folder) checks, before
its first job, what resume would refuse at each job's start (panfpn/engine/training/dry_start.py
``check_resume``, resume.py ``check_resume_start``): a job folder whose checkpoint is of another model,
other categories or an iteration past ``solver.max_iter`` refuses the sweep before job 0 trains; a valid
resume sweep runs; a job folder without a checkpoint starts from scratch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from config_helpers import compose_config
from test_sweep_check import _refusal_lines, _train_multirun
from test_sweep_dry_start import _refused
from tests.engine.conftest import TINY

from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.train_run import train_from_config
from panfpn.utils.errors import ConfigError

NO_EVAL = ["train.eval_period=-1", "train.checkpoint_period=100"]  # one checkpoint: model_final.pth


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The folder of a real 4-iteration tiny training (model_final.pth at iteration 4, ResNet-18
    body, the synthetic categories, SGD)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_from_config(compose_config([*TINY, *NO_EVAL], output_dir=run))
    return run


def _job_folder(trained: Path, sweep: Path, job: int) -> Path:
    """``sweep/<job>`` holding a copy of the trained run, as a preempted job left its folder."""
    folder = sweep / str(job)
    shutil.copytree(trained, folder)
    return folder


def _renamed_categories_json(path: Path) -> Path:
    """The synthetic categories with the thing of id 1 renamed: the class counts (and so the model
    config) stay, the meaning of class 0 changes."""
    categories = [{"id": c.id, "name": "circle" if c.id == 1 else c.name, "isthing": int(c.isthing)}
                  for c in synthetic_metadata().categories]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return path


@pytest.mark.parametrize("change", ["depth", "classes", "max_iter", "optimizer"])
def test_a_job_folder_whose_checkpoint_resume_refuses_stops_the_sweep(capsys, trained, tmp_path, change):
    sweep = tmp_path / "sweep"
    final = _job_folder(trained, sweep, 1) / "model_final.pth"
    overrides = {"depth": ["model.backbone.depth=34"],
                 "classes": ["data.metadata._target_=panfpn.data.folder.json_metadata",
                             f"+data.metadata.json_file={_renamed_categories_json(tmp_path / 'other.json')}"],
                 "max_iter": ["solver.max_iter=2", "solver.schedule.steps=[1]"],
                 "optimizer": ["solver.optimizer._target_=torch.optim.Adam", "~solver.optimizer.momentum"]}[change]
    lines = _refused(capsys, *TINY, *NO_EVAL, *overrides, "resume=true", "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert lines is not None and len(lines) == 1, lines  # job 0's folder holds nothing: it starts from scratch
    assert lines[0].startswith("job 1 [seed=2]: resume=true: "), lines
    assert str(final) in lines[0], lines
    expected = {"depth": "model config differs from the one {} was trained with: model.backbone.depth: 18 -> 34",
                "classes": "{} was trained on the categories of 'synthetic' but data.metadata ('other') has others: "
                           "class 0: id 1 'ellipse' (thing) -> id 1 'circle' (thing)",
                "max_iter": "{} is at iteration 4, past solver.max_iter=2",
                "optimizer": "solver.optimizer._target_ is 'torch.optim.Adam' but {} holds the state of "
                             "'torch.optim.SGD'"}[change]
    assert expected.format(final) in lines[0], lines


def test_a_job_folder_whose_checkpoints_none_loads_stops_the_sweep(capsys, trained, tmp_path):
    """resume=true never starts from scratch over checkpoints it cannot read (load_resumable's
    CheckpointError): the job would stop at its start."""
    sweep = tmp_path / "sweep"
    final = _job_folder(trained, sweep, 1) / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])
    lines = _refused(capsys, *TINY, *NO_EVAL, "resume=true", "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert lines is not None and len(lines) == 1, lines
    assert lines[0].startswith(f"job 1 [seed=2]: CheckpointError: resume=true but no checkpoint in {sweep / '1'} "
                               f"loads: {final} cannot be loaded"), lines


def test_the_refusal_comes_before_job_0_trains(trained, tmp_path):
    """The whole multirun: exit status 1, job 0's folder never made, job 1's checkpoint untouched."""
    sweep = tmp_path / "sweep"
    final = _job_folder(trained, sweep, 1) / "model_final.pth"
    before = final.stat().st_mtime_ns
    proc = _train_multirun(tmp_path, *TINY, *NO_EVAL, "model.backbone.depth=34", "resume=true", "seed=1,2",
                           f"hydra.sweep.dir={sweep}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert not (sweep / "0").exists() and "Traceback" not in out and "training starts" not in out
    lines = _refusal_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"job 1 [seed=2]: resume=true: the model config differs from "
                                                   f"the one {final} was trained with: model.backbone.depth: "
                                                   "18 -> 34"), proc.stderr
    assert final.stat().st_mtime_ns == before


def test_a_valid_resume_sweep_runs_and_a_folder_without_checkpoint_starts_from_scratch(trained, tmp_path):
    """Job 0 continues its checkpoint (iteration 4) to the raised solver.max_iter=6 (the solver change
    stays a warning, logged at the job's start); job 1's folder holds none: it trains from iteration 1."""
    sweep = tmp_path / "sweep"
    _job_folder(trained, sweep, 0)
    proc = _train_multirun(tmp_path, *TINY, *NO_EVAL, "solver.max_iter=6", "resume=true", "seed=0,1",
                           f"hydra.sweep.dir={sweep}", timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "sweep check: 2 job configs valid, dry start built" in out and "1 resume checkpoint" in out, out[-3000:]
    iters = [[json.loads(line)["iter"] for line in (sweep / job / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"] for job in ("0", "1")]
    assert iters == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]], iters
    job0 = (sweep / "0" / "log.txt").read_text()
    assert "resumed from" in job0 and "at iteration 4" in job0 and "solver.max_iter: 4 -> 6" in job0
    assert "holds no checkpoint: starting from scratch" in (sweep / "1" / "log.txt").read_text()


def test_the_check_reads_no_tensor_and_builds_no_real_model(trained, tmp_path, monkeypatch):
    """The checkpoint is mapped (torch.load mmap=True), the model is the meta one: nothing is loaded
    into a model or an optimizer (resume's own loaders are never called)."""
    import torch

    from panfpn.engine.training import resume
    from panfpn.engine.training.dry_start import DryStart

    loads: list[dict] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(k), real_load(*a, **k))[1])
    monkeypatch.setattr(resume, "_load_optimizer", lambda *a: pytest.fail("no optimizer state is loaded"))
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: pytest.fail("no model state is loaded"))
    dry = DryStart()
    with pytest.raises(ConfigError, match="past solver.max_iter=2"):
        dry.check(compose_config([*TINY, *NO_EVAL, "solver.max_iter=2", "solver.schedule.steps=[1]", "resume=true"],
                                 output_dir=trained))
    assert [k.get("mmap") for k in loads] == [True], loads
    assert dry.cpu_models == 0 and dry.builds["model"] == 1
