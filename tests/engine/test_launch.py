"""End-to-end launches through tools/train.py: signal handling, one training per run folder and
2-process gloo DDP. Every process is started in its own group and killed with it (process_helpers)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from panfpn.engine.training.checkpoint import find_last_checkpoint, load_training_checkpoint
from panfpn.engine.training.run_lock import LOCK_FILE, RunDirLock
from process_helpers import run as run_in_group, started

# Subprocess launches of tools/train.py (tens of seconds each): the quick loop, -m "not slow", skips them.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("sig,workers,whole_group", [
    (signal.SIGTERM, 0, False),  # Slurm / kill: the training process alone
    (signal.SIGINT, 1, True),    # Ctrl-C in a terminal: the process group, DataLoader workers too
    # Slurm's scancel / preemption, `kill -- -PGID`, `timeout`: every process, DataLoader workers too
    # (torch's worker handler died on it, and the run failed instead of saving a checkpoint)
    (signal.SIGTERM, 1, True),
], ids=["sigterm", "ctrl_c", "sigterm_to_all_processes"])
def test_signal_saves_a_loadable_checkpoint_and_exits_128_plus_signal(tmp_path, tiny_args, sig, workers,
                                                                     whole_group):
    run = tmp_path / "run"
    args = [*tiny_args, "solver.max_iter=100000", "solver.schedule.steps=[50000]", f"data.num_workers={workers}",
            "train.checkpoint_period=100000", "train.eval_period=-1", f"hydra.run.dir={run}"]
    # Its own process group with Python's Ctrl-C handling (also when pytest's shell ignores SIGINT),
    # killed whole when the test ends: a failure never leaves the 100000-iteration run behind.
    with started([sys.executable, str(ROOT / "tools/train.py"), *args], env=_env(), stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.time() + 180
        while time.time() < deadline and len(_metrics(run)) < 2 and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        if not whole_group:  # meanwhile, a second training into the same folder is refused at once
            second = run_in_group([sys.executable, str(ROOT / "tools/train.py"), *args], env=_env(),
                                  capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr[-3000:]  # RunDirBusyError: one line, exit 2
            assert f"{run} is in use by another training: pid {proc.pid} on host" in second.stderr
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    # 128 + signal, like a shell reports a process the signal ended: `train && eval` stops here.
    assert proc.returncode == 128 + sig, out
    assert "continue with resume=true" in out
    ckpt = load_training_checkpoint(find_last_checkpoint(run))
    assert 2 <= ckpt["iteration"] < 100000
    iterations = [r["iter"] for r in _metrics(run) if r["kind"] == "train"]
    assert iterations == sorted(set(iterations))  # each iteration logged once: no second writer
    assert not (run / LOCK_FILE).exists()  # released on the way out
    with RunDirLock(run) as lock:
        assert lock.held


def test_two_process_gloo_ddp_matches_single_process_with_same_global_batch(tmp_path, tiny_args):
    common = [*tiny_args, "solver.max_iter=1", "solver.schedule.steps=[]", "train.eval_period=-1"]
    single = run_in_group(
        [sys.executable, str(ROOT / "tools/train.py"), *common, "data.batch_size=2",
         f"hydra.run.dir={tmp_path / 'single'}"], env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_in_group(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tools/train.py"), *common, "data.batch_size=1", f"hydra.run.dir={tmp_path / 'ddp'}"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _metrics(tmp_path / "single")[0], _metrics(tmp_path / "ddp")[0]
    assert a["lr"] == b["lr"]  # same global batch: no lr rescaling
    # Same images with the same augmentation; what differs is per-process RPN/RoI sampling
    # and the per-rank averaging of pixel-mean losses.
    assert b["loss/loss_sem_seg"] == pytest.approx(a["loss/loss_sem_seg"], rel=0.05)
    assert b["loss/total"] == pytest.approx(a["loss/total"], rel=0.15)
    ddp_ckpt = load_training_checkpoint(find_last_checkpoint(tmp_path / "ddp"))
    assert ddp_ckpt["iteration"] == 1 and len(ddp_ckpt["rng"]) == 2


def test_two_process_eval_equals_single_process(tmp_path, tiny_args, tiny_weights):
    common = [*tiny_args, "eval.max_images=null", "data.val.num_images=5", "model.merge.score_thresh=0.0",
              "model.merge.stuff_area=1"]
    weights = f"weights={tiny_weights}"  # the session's tiny training: any trained checkpoint will do
    single = run_in_group([sys.executable, str(ROOT / "tools/eval.py"), *common, weights,
                             f"hydra.run.dir={tmp_path / 'one'}"], env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_in_group(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tools/eval.py"), *common, weights, f"hydra.run.dir={tmp_path / 'two'}"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert one["num_images"] == two["num_images"] == 5
    assert two["image_set"] == one["image_set"] and one["image_set"]["count"] == 5  # both ranks' images
    for split in ("All", "Things", "Stuff"):
        assert two["panoptic"][split]["pq"] == pytest.approx(one["panoptic"][split]["pq"], abs=1e-12)
    assert two["sem_seg"]["mIoU"] == pytest.approx(one["sem_seg"]["mIoU"], abs=1e-12)
    assert two["segm"]["AP"] == pytest.approx(one["segm"]["AP"], abs=1e-12)
