"""Stop signals at the phases of a training job as Slurm, torchrun and hydra multiruns send them:
the job ends with a one-line message, exit status 128 + signal, its job_status.json and (in a
multirun) the sweep summary; never a traceback or a lost status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from process_helpers import alive, descendants, run, started
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


# run_training_job of a training that finished, with a signal sent while its outcome is written.
SIGNAL_AT_END = textwrap.dedent("""
    import os, signal, sys
    from omegaconf import OmegaConf
    import panfpn.engine.train_run as train_run
    import panfpn.engine.training.job as job

    out, signum = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    train_run.train_from_config = lambda cfg: {
        "iteration": 3, "interrupted": False, "signal": None, "checkpoint": out + "/model_final.pth",
        "eval": {"panoptic": {"All": {"pq": 0.5}}}, "eval_iteration": 3, "losses": {}}
    real = job.nonfinite_to_null

    def signalled_while_writing(record):  # scancel / Ctrl-C as eval_results.json is written
        os.kill(os.getpid(), signum)
        return real(record)

    job.nonfinite_to_null = signalled_while_writing
    cfg = OmegaConf.create({"output_dir": out, "solver": {"max_iter": 3}, "train": {"objective": None}})
    job.run_training_job(cfg)
    print("returned")
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_finished_job_writes_its_results_leaves_them(tmp_path, signum):
    """Before: the job's handler was gone once train_from_config returned, so a SIGTERM there killed
    the process before job_status.json was written (a Ctrl-C: a KeyboardInterrupt traceback, no
    status either); the sweep summary then said 'unknown' for a training that had finished."""
    done = run([sys.executable, "-c", SIGNAL_AT_END, str(tmp_path), str(int(signum))], env=_env(),
               capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "returned", (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    record = json.loads((tmp_path / "job_status.json").read_text())
    assert record["status"] == "done" and record["iteration"] == 3
    assert json.loads((tmp_path / "eval_results.json").read_text())["iteration"] == 3


# tools/train.py -m, jobs that finish at once, a Ctrl-C before the first job or between two jobs.
CTRL_C_IN_SWEEP = textwrap.dedent("""
    import os, runpy, signal, sys
    import panfpn.engine.sweep.callback as callback
    import panfpn.engine.sweep.precheck as precheck
    import panfpn.engine.train_run as train_run

    where, signum = sys.argv[1], int(sys.argv[2])
    train_run.train_from_config = lambda cfg: {
        "iteration": 4, "interrupted": False, "signal": None, "checkpoint": None, "eval": None, "losses": {}}

    def ctrl_c_after(real):
        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            os.kill(os.getpid(), signum)
            return out
        return wrapped

    if where == "sweep check":  # the dry start of the jobs before the first one
        precheck.refuse_bad_sweep = ctrl_c_after(precheck.refuse_bad_sweep)
    elif where == "job 0 writing its status":  # noted by the job's handler, passed on once written
        import panfpn.engine.training.job as job
        job.write_job_status = ctrl_c_after(job.write_job_status)
    elif where == "job 0 returned":  # job 0 done, before hydra's on_job_end writes the summary
        import panfpn.engine.tool_errors as tool_errors
        tool_errors.InputErrorsExit.__exit__ = ctrl_c_after(tool_errors.InputErrorsExit.__exit__)
    else:  # after job 0's summary, before job 1
        callback.SweepSummary._write = ctrl_c_after(callback.SweepSummary._write)
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
@pytest.mark.parametrize("where, jobs", [("sweep check", []), ("job 0 writing its status", [("0", "done")]),
                                         ("job 0 returned", [("0", "done")]), ("between jobs", [("0", "done")])])
def test_a_stop_signal_outside_the_jobs_of_a_multirun_is_one_line_and_128_plus_signal(tmp_path, where, jobs, signum):
    """Before: hydra lets a KeyboardInterrupt through (it catches Exception), so a Ctrl-C while the
    sweep checked its jobs or between two jobs ended in a traceback of hydra's internals. A Ctrl-C
    as job 0 returned (its job_status.json done), before hydra's on_job_end: the line said that
    summary.json lists the jobs that ended, and there was no summary.json (its callback never ran).
    A Ctrl-C while job 0 wrote job_status.json was noted, then dropped: the sweep went on (exit 0).
    A SIGTERM at any of these points killed the sweep without a word (-15), leaving the summary of
    the job before (none at all after job 0 returned)."""
    sweep = tmp_path / "sweep"
    done = run([sys.executable, "-c", CTRL_C_IN_SWEEP, where, str(int(signum)), str(ROOT / "tools/train.py"), "-m",
                *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"], env=_env(), capture_output=True, text=True,
               timeout=120)
    assert done.returncode == 128 + signum, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"sweep stopped by {signal.Signals(signum).name} outside a training job" in done.stderr
    rows = json.loads((sweep / "summary.json").read_text())["jobs"] if jobs else []
    assert [(r["job"], r["status"]) for r in rows] == jobs
    assert not (sweep / "1").exists()


def _wait_for(path: Path, proc, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (path.is_file() and path.stat().st_size > 0):
        time.sleep(0.1)
    assert proc.poll() is None and path.is_file(), f"{path} not written"


def test_a_second_sigterm_to_the_group_in_the_loop_aborts_in_one_true_line(tmp_path):
    """Slurm's preemption SIGTERM then another: the run aborts at once, exit 143, its DataLoader
    workers gone. Before, the line said the signal came 'outside the training loop'."""
    run_dir = tmp_path / "run"
    args = [*TINY, "solver.max_iter=100000", "solver.schedule.steps=[50000]", "train.eval_period=-1",
            "train.checkpoint_period=100000", "data.num_workers=2", "train.objective=null",
            f"hydra.run.dir={run_dir}"]
    with started([sys.executable, str(ROOT / "tools/train.py"), *args], env=_env(), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True) as proc:
        _wait_for(run_dir / "metrics.jsonl", proc, 120)  # in the loop: an iteration was logged
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert left == []  # DataLoader workers ended with their parent
    assert "Traceback" not in err
    assert "outside the training loop" not in err
    assert "training stopped by SIGTERM without saving a checkpoint" in err
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "interrupted"


# tools/train.py with a signal sent to itself as the job first imports the training code (torch,
# torchvision: seconds under load), right after hydra wrote the run folder's .hydra files.
SIGNAL_AT_IMPORT = textwrap.dedent("""
    import builtins, os, runpy, signal, sys
    signum, real_import = int(sys.argv[1]), builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "panfpn.engine.train_run" and "panfpn.engine.train_run" not in sys.modules:
            os.kill(os.getpid(), signum)
        return real_import(name, *args, **kwargs)

    builtins.__import__ = importing
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_job_imports_the_training_code_is_an_interrupted_job(tmp_path, signum):
    """Before: the job's handler was installed after those imports (1.8 s here), so a SIGTERM there
    killed the job without job_status.json, and a Ctrl-C gave a traceback."""
    run_dir = tmp_path / "run"
    done = run([sys.executable, "-c", SIGNAL_AT_IMPORT, str(int(signum)), str(ROOT / "tools/train.py"), *TINY,
                f"hydra.run.dir={run_dir}"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signum, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"training stopped by {signal.Signals(signum).name} without saving a checkpoint" in done.stderr
    record = json.loads((run_dir / "job_status.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == signum


# tools/train.py with a patch (in $PANFPN_TEST_PATCH) run first.
PATCHED = ("import os, runpy, sys; exec(os.environ['PANFPN_TEST_PATCH']); sys.argv = sys.argv[1:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")
# Blocks once the training's main() has returned (hydra's end and Python's exit would follow),
# after writing $PANFPN_TEST_BUSY<RANK>; every rank of a torchrun job.
AFTER_THE_JOB = textwrap.dedent("""
    import os, time
    from pathlib import Path
    import panfpn.engine.tool_errors as tool_errors
    real_exit = tool_errors.InputErrorsExit.__exit__

    def after_the_job(self, kind, err, tb):
        if kind is None:
            Path(os.environ['PANFPN_TEST_BUSY'] + os.environ.get('RANK', '0')).write_text('1')
            while True:
                time.sleep(0.05)
        return real_exit(self, kind, err, tb)

    tool_errors.InputErrorsExit.__exit__ = after_the_job
""")
# Sends $PANFPN_TEST_SIGNAL to itself as the finished training writes job_status.json.
WHILE_WRITING_THE_OUTCOME = textwrap.dedent("""
    import os
    from pathlib import Path
    import panfpn.engine.training.job as job
    real_write = job.write_job_status

    def signalled_while_writing(run_dir, status, **kwargs):
        if status == 'done':
            os.kill(os.getpid(), int(os.environ['PANFPN_TEST_SIGNAL']))
        real_write(run_dir, status, **kwargs)
        Path(os.environ['PANFPN_TEST_BUSY'] + '0').write_text('1')

    job.write_job_status = signalled_while_writing
""")


def _finished_line(err: str, signum: int, run_dir: Path, evaluated: bool = True, torchrun: bool = False) -> None:
    """One line (rank 0's), no traceback (but torchrun's own, of its SignalException); the exit
    status is the caller's to check."""
    lines = [line for line in err.splitlines() if line.startswith("tools/train.py:")]
    assert lines == [f"tools/train.py: stopped by {signal.Signals(signum).name} after the job had finished: every "
                     f"output was written (final checkpoint {run_dir / 'model_final.pth'}; in {run_dir}: "
                     + ("eval_results.json, " if evaluated else "")
                     + f"job_status.json says done at iteration {4 if evaluated else 2} of "
                     f"{4 if evaluated else 2})"], err[-3000:]
    assert err.count("Traceback") == torchrun, err[-3000:]
    assert not torchrun or "SignalException: Process" in err.split("Traceback")[1], err[-3000:]
    assert "before its job started" not in err, err[-3000:]


def _says_done(status: Path) -> bool:
    try:
        return json.loads(status.read_text())["status"] == "done"
    except (OSError, ValueError):  # not there yet
        return False


@pytest.mark.parametrize("patch, signum", [
    (AFTER_THE_JOB, signal.SIGTERM), (AFTER_THE_JOB, signal.SIGINT), (WHILE_WRITING_THE_OUTCOME, signal.SIGTERM),
    ("", signal.SIGTERM),
], ids=["sigterm_after_the_job", "sigint_after_the_job", "sigterm_while_writing_the_outcome",
        "sigterm_as_job_status_says_done"])
def test_a_signal_after_the_training_finished_says_so_in_one_line(tmp_path, patch, signum):
    """The training wrote model_final.pth, eval_results.json and job_status.json (done); hydra and
    Python are ending (which takes seconds with torch). Before: a SIGTERM killed the process
    silently (-15: a scheduler's log could not tell that the run had completed), a Ctrl-C printed
    'training stopped by SIGINT before its job started (no job_status.json)' (false) with 130,
    or a KeyboardInterrupt traceback from an atexit callback of torch with 0; a signal noted while
    job_status.json was written was dropped (exit 0, no line). Unpatched, a signal sent as soon as
    job_status.json says done (polled) comes within the second or so that the process still runs."""
    run_dir, busy = tmp_path / "run", tmp_path / "busy"
    env = dict(_env(), PANFPN_TEST_PATCH=patch, PANFPN_TEST_BUSY=str(busy), PANFPN_TEST_SIGNAL=str(int(signum)))
    args = [*TINY, "data.num_workers=1", f"hydra.run.dir={run_dir}"]
    with started([sys.executable, "-c", PATCHED, str(ROOT / "tools/train.py"), *args], env=env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 120
        while not (Path(f"{busy}0").exists() if patch else _says_done(run_dir / "job_status.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.005)
        if patch is not WHILE_WRITING_THE_OUTCOME:  # that one signals itself
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    _finished_line(err, signum, run_dir)
    assert left == []  # the DataLoader workers were gone before
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_a_sigterm_after_a_torchrun_training_finished_is_said_by_rank_0_alone(tmp_path):
    """torchrun --nproc_per_node 2, both ranks past their job (rank 0 wrote model_final.pth and
    job_status.json), torchrun gets SIGTERM and passes it on to each rank: one line, rank 0's.
    Before: no line at all (each rank killed by the signal), only torchrun's own SignalException."""
    run_dir, busy = tmp_path / "run", tmp_path / "busy"
    wrapper = tmp_path / "train_after_the_job.py"  # what torchrun runs on each rank: the patch, then the tool
    wrapper.write_text(AFTER_THE_JOB + f"\nimport runpy\nrunpy.run_path({str(ROOT / 'tools/train.py')!r}, "
                       "run_name='__main__')\n")
    args = [*TINY, "data.batch_size=1", "solver.max_iter=2", "solver.schedule.steps=[]", "train.eval_period=-1",
            "train.objective=null", "solver.schedule.warmup_iters=0",
            "model.backbone.norm=gn", f"hydra.run.dir={run_dir}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper), *args]
    with started(cmd, env=dict(_env(), PANFPN_TEST_BUSY=str(busy)), stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 180
        while not (Path(f"{busy}0").exists() and Path(f"{busy}1").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.02)
        ranks = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in ranks), err[-3000:]
    assert proc.returncode != 0, err[-3000:]  # torchrun's own end on a signal (1, its SignalException)
    _finished_line(err, signal.SIGTERM, run_dir, evaluated=False, torchrun=True)
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "done"
