"""Stop signals at the phases of a training job as Slurm, torchrun and hydra multiruns send them:
the job ends with a one-line message, exit status 128 + signal, its job_status.json and (in a
multirun) the sweep summary; never a traceback or a lost status."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

from process_helpers import run
from tests.engine.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]

# tools/train.py with a SIGTERM sent to itself where the job starts (as scancel while the data loads).
STOP_AT_START = textwrap.dedent("""
    import os, runpy, signal, sys, time
    import panfpn.engine.train_run as train_run

    def stopped_while_starting(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)

    train_run.train_from_config = stopped_while_starting
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + str(ROOT / "tests") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_a_multirun_job_stopped_while_starting_stops_the_sweep_with_its_summary(tmp_path):
    """Before: JobStopped (a KeyboardInterrupt) went past hydra's job runner, which catches only
    Exception: no sweep summary, a KeyboardInterrupt traceback and exit status 130 for a SIGTERM."""
    sweep = tmp_path / "sweep"
    done = run([sys.executable, "-c", STOP_AT_START, str(ROOT / "tools/train.py"), "-m", *TINY, "seed=0,1",
                f"hydra.sweep.dir={sweep}"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "sweep stopped: job 0 was interrupted by signal 15" in done.stderr
    assert json.loads((sweep / "0" / "job_status.json").read_text())["status"] == "interrupted"
    rows = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted")]  # job 1 never started
    assert not (sweep / "1").exists()
