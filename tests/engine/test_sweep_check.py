"""A multirun checks every job's config before the first job starts (panfpn/engine/sweep/precheck.py):
a bad element of a sweep list stops the sweep at once, naming the job, its overrides and the key,
before job 0 writes anything; a valid sweep runs as before."""

import json
import os
import sys
from pathlib import Path

import pytest

from process_helpers import run as run_in_group

ROOT = Path(__file__).resolve().parents[2]
SWEEP_TINY = ["solver.max_iter=2", "solver.schedule.steps=[1]", "solver.schedule.warmup_iters=1",
              "data.val.num_images=2", "eval.max_images=2", "train.num_vis_images=0", "train.checkpoint_period=100"]


def _train_multirun(tmp_path: Path, *args: str, timeout: float = 300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HYDRA_FULL_ERROR", None)
    return run_in_group([sys.executable, str(ROOT / "tools/train.py"), "-m", *args], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=timeout)


def _refusal_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


def test_a_sweep_whose_job_2_is_invalid_is_refused_before_job_0_writes_anything(tmp_path, tiny_args):
    sweep = tmp_path / "sweep"
    proc = _train_multirun(tmp_path, *tiny_args, *SWEEP_TINY, "solver.base_lr=0.01,0.02,-1", f"hydra.sweep.dir={sweep}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert not sweep.exists(), sorted(str(p) for p in sweep.rglob("*"))  # no job folder, checkpoint, metrics
    assert not list(tmp_path.rglob("metrics.jsonl")) and not list(tmp_path.rglob("*.pth"))
    assert "Traceback" not in out and "training starts" not in out
    assert "sweep refused before any job started: 1 of 3" in proc.stderr
    lines = _refusal_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("job 2 [") and "solver.base_lr=-1]" in lines[0], lines
    assert "config key 'solver.base_lr' must be a finite number > 0, got -1" in lines[0]


def test_each_bad_job_of_a_grid_is_named_with_its_key(tmp_path, tiny_args):
    """A bad element of a list-valued key (one transform's short_edge_lengths), a wrong type, a key of
    another tool: one line per bad job, job 0 (valid) not listed."""
    sweep = tmp_path / "sweep"
    proc = _train_multirun(tmp_path, *tiny_args, "data.train.transforms.transforms.0.short_edge_lengths=[64],[0]",
                           "solver.max_iter=4,abc", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert not sweep.exists()
    lines = _refusal_lines(proc.stderr)
    assert [line.split(" [")[0] for line in lines] == ["job 1", "job 2", "job 3"], proc.stderr
    assert "solver.max_iter=abc]" in lines[0] and "config key 'solver.max_iter' must be an integer" in lines[0]
    assert "short_edge_lengths=[0] solver.max_iter=4]" in lines[1]
    assert "config key 'data.train.transforms.transforms.0': short_edge_lengths" in lines[1]

    # hydra writes a job's booleans as False / True (as in its .hydra/overrides.yaml)
    other = _train_multirun(tmp_path, *tiny_args, "eval.save_predictions=false,true", f"hydra.sweep.dir={sweep}")
    assert other.returncode == 2 and not sweep.exists(), (other.stdout + other.stderr)[-3000:]
    lines = _refusal_lines(other.stderr)
    assert lines == [f"job {i} [eval.save_predictions={v}]: tools/train.py does not read eval.save_predictions={v}: "
                     "the run would ignore it; remove it" for i, v in enumerate(("False", "True"))], other.stderr


def test_optuna_values_are_checked_before_the_first_trial(tmp_path, tiny_args):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    sweep = tmp_path / "optuna"
    proc = _train_multirun(tmp_path, *tiny_args, *SWEEP_TINY, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                           "hydra.sweeper.direction=maximize", "solver.base_lr=interval(-0.01,0.02)",
                           "train.objective=choice(pq/All,pq/al,sem_seg/miou)", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert not sweep.exists()
    lines = _refusal_lines(proc.stderr)
    assert len(lines) == 3, proc.stderr  # the upper bound and pq/All pass
    assert lines[0] == "lower bound of solver.base_lr [solver.base_lr=-0.01]: config key 'solver.base_lr' must be " \
                       "a finite number > 0, got -0.01 (float)"
    assert lines[1].startswith("choice of train.objective [train.objective=pq/al]: ") and "'pq/All'" in lines[1]
    assert lines[2].startswith("choice of train.objective [train.objective=sem_seg/miou]: ") \
        and "'sem_seg/mIoU'" in lines[2]


def test_a_valid_sweep_is_checked_then_runs(tmp_path, tiny_args):
    sweep = tmp_path / "sweep"
    proc = _train_multirun(tmp_path, *tiny_args, *SWEEP_TINY, "eval.compute_ap=false", "solver.base_lr=0.01,0.02",
                           f"hydra.sweep.dir={sweep}", timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "sweep check: 2 job configs valid" in out
    rows = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["status"], r["params"]) for r in rows] == [("0", "done", "solver.base_lr=0.01"),
                                                                    ("1", "done", "solver.base_lr=0.02")]
