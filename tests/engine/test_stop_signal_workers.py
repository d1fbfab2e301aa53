"""A launch of tools/train.py that ends with DataLoader workers running leaves no process behind."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from process_helpers import started

pytestmark = pytest.mark.slow  # a subprocess launch of tools/train.py
ROOT = Path(__file__).resolve().parents[2]


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or it just ended
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_training_that_fails_with_workers_running_exits_and_leaves_no_process(tmp_path, tiny_args):
    # An error in the loop (here a non-finite loss), like Ctrl-C twice, leaves the training
    # DataLoader's workers running: Python's exit terminate()s them (SIGTERM from their parent)
    # and joins them. Workers that ignored every SIGTERM kept the failed run waiting forever.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [*tiny_args, "solver.max_iter=1000", "solver.base_lr=1e30", "data.num_workers=2",
            "train.eval_period=-1", f"hydra.run.dir={tmp_path / 'run'}"]
    with started([sys.executable, str(ROOT / "tools/train.py"), *args], env=env, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True) as proc:
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the failed training did not exit: {len(_group(proc.pid))} processes of its group left")
        assert proc.returncode == 1 and "NonFiniteLossError" in out, out[-3000:]
        time.sleep(0.5)
        assert _group(proc.pid) == []
