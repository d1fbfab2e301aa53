"""A misspelt engine key typed to a tool (``solver.max_itr=3``) is one line and exit 2, with a
did-you-mean (panfpn/engine/config/misspelt.py), as docs/training.md and README promise for a bad
config key. Before, hydra refused it first: its ``Could not override 'solver.max_itr'. ... Key
'max_itr' is not in struct`` block and exit status 1; only ``+solver.max_itr=3`` got the did-you-mean."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from panfpn.engine.config.misspelt import check_typed_keys
from panfpn.utils.errors import ConfigError
from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("arg", "message"), [
    ("solver.max_itr=3", "unknown config key 'solver.max_itr'; did you mean 'max_iter'?"),
    ("eval.batchsize=2", "unknown config key 'eval.batchsize'; did you mean 'batch_size'?"),
    ("train.eval_perod=5,10", "unknown config key 'train.eval_perod'; did you mean 'eval_period'?"),
    ("trian.amp=true", "unknown config key 'trian'; did you mean 'train'?"),
    ("wieghts=model.pth", "unknown config key 'wieghts'; did you mean 'weights'?"),
    ("solver.schedul.steps=[3]", "unknown config key 'solver.schedul'; did you mean 'schedule'?"),
])
def test_an_undeclared_engine_key_is_refused_with_a_did_you_mean(arg, message):
    with pytest.raises(ConfigError) as err:
        check_typed_keys(["device=cpu", arg])
    assert str(err.value) == message


def test_what_hydra_or_the_groups_decide_is_left_to_them():
    """Group choices, keys inside a group's nodes, ``+`` / ``++`` / ``~`` forms, hydra's keys and flags,
    sweeps, packages and what hydra cannot parse pass (hydra or the later checks judge them)."""
    check_typed_keys([
        "-m", "--cfg", "job", "experiment=coco_r50_1x", "model=panoptic_fpn_r50,panoptic_fpn_r101",
        "model.merge.score_thresh=0.3", "model.anything.deeper=1", "solver.schedule.steps=[3]",
        "solver.optimizer._target_=torch.optim.AdamW", "data.train.transforms.transforms.0.max_size=128",
        "data.root=/data/coco", "solver.base_lr=0.01,0.02", "+solver.max_itr=3", "++model.inference.x=1",
        "~solver.weight_decay_embed", "hydra.run.dir=outputs/x", "hydra/launcher=slurm", "key@pkg=1",
        "seed=0", "resume=true", "weights=model_final.pth", "output_dir=x", "predict.input=photos/",
        "export.format=onnx", "merge.rules=detectron2", "eval.evaluators=[pq_by_area]", "broken=[",
    ])


def _tool(tool: str, args: list[str], tmp_path: Path, **env: str):
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args], cwd=tmp_path, env=environ,
               capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("tool", ["train", "eval", "predict", "export"])
def test_a_tool_says_it_in_one_line_and_exits_2(tmp_path, tool):
    run_dir = tmp_path / "run"
    done = _tool(tool, ["solver.max_itr=3", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == f"tools/{tool}.py: unknown config key 'solver.max_itr'; did you mean 'max_iter'?"
    assert not run_dir.exists()  # refused before hydra made the run folder


def test_a_sweep_is_refused_alike(tmp_path):
    done = _tool("train", ["-m", "train.eval_perod=5,10", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == "tools/train.py: unknown config key 'train.eval_perod'; did you mean 'eval_period'?"


def test_hydra_full_error_leaves_it_to_hydra(tmp_path):
    done = _tool("train", ["solver.max_itr=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, HYDRA_FULL_ERROR="1")
    assert done.returncode == 1 and "Key 'max_itr' is not in struct" in done.stderr and "Traceback" in done.stderr


@pytest.mark.parametrize("output_dir", [False, True])
def test_the_merge_tool_says_it_in_one_line_too(tmp_path, output_dir):
    """tools/merge.py merge.wrkers=2: hydra's block and exit 1, and with merge.output_dir= (the tool's
    compose-once path) a full traceback. Now the same one line and exit 2 as the other tools."""
    out = [f"merge.output_dir={tmp_path / 'out'}"] if output_dir else [f"hydra.run.dir={tmp_path / 'run'}"]
    done = _tool("merge", ["merge.wrkers=2", *out], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == "tools/merge.py: unknown config key 'merge.wrkers'; did you mean 'workers'?"
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
