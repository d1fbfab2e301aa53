"""A stop signal outside the training loop: while a job starts, and while it writes how it failed.

Before, the default action killed the process there and job_status.json was never written: a
torchrun job whose rank 1 failed lost rank 0's report of it when torchrun's SIGTERM to the ranks
left came before rank 0 had written it (seen under load)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from panfpn.engine import rank_errors
from panfpn.engine.training.job_signals import JobStopped, defer_stop_signals, job_stop_signals
from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from omegaconf import OmegaConf
    import panfpn.engine.train_run as train_run
    import panfpn.engine.training.job as job
    import panfpn.engine.training.start_checks as start_checks

    out, mode = sys.argv[1], sys.argv[2]

    def fake_training(cfg):
        if mode == "starting":  # e.g. scancel while the dataset loads
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)
        raise RuntimeError("Connection closed by peer")  # rank 0's collective after rank 1 failed

    real_write = job.write_job_status

    def write_under_sigterm(*args, **kwargs):  # torchrun's SIGTERM while the failure is written
        os.kill(os.getpid(), signal.SIGTERM)
        real_write(*args, **kwargs)

    train_run.train_from_config = fake_training
    start_checks.check_job_start = lambda cfg: None
    if mode == "failing":
        job.write_job_status = write_under_sigterm
    cfg = OmegaConf.create({"output_dir": out, "solver": {"max_iter": 3}, "train": {"objective": None}})
    try:
        job.run_training_job(cfg)
    except BaseException as err:
        if mode == "failed_rank":  # torchrun's SIGTERM to the ranks left, as the failed rank exits
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        print("raised", type(err).__name__, getattr(err, "signum", None))
        sys.exit(3)
""")


@pytest.mark.parametrize("mode, status, raised", [
    ("starting", "interrupted", "raised JobStopped 15"),
    ("failing", "failed", "raised RuntimeError None"),
])
def test_a_sigterm_outside_the_loop_still_leaves_the_job_status(tmp_path, mode, status, raised):
    done = run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])  # was -15: killed, nothing written
    assert done.stdout.strip() == raised
    record = json.loads((tmp_path / "job_status.json").read_text())
    assert record["status"] == status
    assert record["signal"] == (signal.SIGTERM if mode == "starting" else None)


def test_a_rank_that_failed_is_not_killed_by_torchruns_sigterm_on_its_way_out(tmp_path):
    """A rank of a torchrun job (WORLD_SIZE=2) whose job failed (rank 0 after rank 1's bad image:
    it is to exit 2) gets torchrun's SIGTERM after the job handler's block: the handler stays and
    notes it, and the rank exits with its own status. Before, the default action was back and
    killed it (-15 in torchrun's report instead of 2), seen in a 2-rank training under load."""
    env = dict(os.environ, WORLD_SIZE="2", RANK="0")
    done = run([sys.executable, "-c", SCRIPT, str(tmp_path), "failed_rank"], capture_output=True, text=True,
               timeout=60, env=env)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])  # was -15
    assert done.stdout.strip() == "raised RuntimeError None"
    assert json.loads((tmp_path / "job_status.json").read_text())["status"] == "failed"


def test_rank_0_stopped_by_torchrun_names_the_rank_that_failed(tmp_path, monkeypatch):
    """torchrun's SIGTERM reached rank 0 before its collective failed: rank 1's error is still the
    one reported."""
    monkeypatch.setattr(rank_errors.du, "is_multiprocess", lambda: True)
    monkeypatch.setattr(rank_errors.du, "is_main_process", lambda: True)
    monkeypatch.setattr(rank_errors.du, "get_world_size", lambda: 2)
    with pytest.raises(rank_errors.OtherRankFailedError, match=r"^rank 1 failed: BadImageError: image 7"):
        with rank_errors.told_to_rank_0(tmp_path):
            (tmp_path / "rank1_error.json").write_text(json.dumps(
                {"rank": 1, "time": 4e9, "error": "BadImageError: image 7"}))
            raise JobStopped(signal.SIGTERM)
    with pytest.raises(JobStopped):  # no other rank failed: a stop is a stop
        (tmp_path / "rank1_error.json").unlink()
        with rank_errors.told_to_rank_0(tmp_path):
            raise JobStopped(signal.SIGTERM)


def test_a_failing_job_notes_stop_signals_instead_of_raising_them():
    """Once a failure is being handled (defer_stop_signals), a SIGTERM is noted: raised, it replaced
    rank 1's error that rank 0 was about to write (status 'interrupted' instead of 'failed')."""
    with job_stop_signals() as signals:
        with pytest.raises(JobStopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        defer_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.noted == signal.SIGTERM
    defer_stop_signals()  # no job running: nothing to defer, no error


# Records, for each fork (os.fork, multiprocessing's "fork" start), which SIGTERM handler was on:
# 'job' when the job-level handler would raise (JobSignals, not deferred), else the handler's
# class; the fork that the patched check_job_start makes (under the job handler) is the 'canary'.
FORK_WITNESS = textwrap.dedent("""
    import multiprocessing as _mp, os, signal as _signal
    from pathlib import Path as _Path
    import panfpn.engine.training.start_checks as _checks
    _log, _canary = _Path(os.environ['PANFPN_TEST_OUT']) / 'forks', []
    def _before_fork():
        handler = _signal.getsignal(_signal.SIGTERM)
        owner = getattr(handler, '__self__', None)
        raising = type(owner).__name__ == 'JobSignals' and not owner.deferred
        with open(_log, 'a') as f:
            f.write(('job' if raising else type(owner).__name__) + (' canary' if _canary else '') + '\\n')
    os.register_at_fork(before=_before_fork)
    _check = _checks.check_job_start
    def _check_with_a_fork(cfg):
        _canary.append(1)
        child = _mp.get_context('fork').Process(target=int)
        child.start()
        child.join()
        _canary.clear()
        return _check(cfg)
    _checks.check_job_start = _check_with_a_fork
""")
RUNNER = ("import os, runpy, sys; exec(os.environ['PANFPN_TEST_PATCH']); sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")
TINY_TRAINING = ["data.train.num_images=4", "data.train.height=64", "data.train.width=64",
                 "data.train.transforms.transforms.0.short_edge_lengths=[64]",
                 "data.train.transforms.transforms.0.max_size=128", "data.val.num_images=2", "data.val.height=64",
                 "data.val.width=64", "data.batch_size=1", "data.num_workers=1", "solver=synthetic_sgd",
                 "solver.schedule.warmup_iters=0", "solver.schedule.steps=[]", "solver.max_iter=2",
                 "train.eval_period=0", "train.progress_bar=false", "eval.compute_ap=false", "weights=null",
                 "device=cpu"]


def test_no_process_is_forked_where_the_job_level_handler_raises(tmp_path):
    """The job-level handler (JobSignals: while the job starts and after its loop) raises JobStopped
    and has no fork-window guard (panfpn/utils/fork_window.py): an exception raised in an at-fork
    callback is dropped, and the stop lost. It needs none while no process is forked under it:
    DataLoader workers and the PQ pool start inside the loop, where the loop's handler (_StopFlag)
    only sets a flag. This pins that: a training's forks are all made under another handler, and
    the canary (a fork under the job handler, as a future pool in the start checks would make) is
    seen. A fork added there fails this test: give JobSignals the guard of StopSignals._handle
    (forking() / signal_after_fork) then."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PANFPN_TEST_PATCH=FORK_WITNESS, PANFPN_TEST_OUT=str(tmp_path),
               PANFPN_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    done = run([sys.executable, "-c", RUNNER, str(ROOT / "tools" / "train.py"), *TINY_TRAINING,
                f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    forks = (tmp_path / "forks").read_text().splitlines()
    assert forks.count("job canary") == 1, forks  # the witness sees a fork under the job handler
    others = [f for f in forks if not f.endswith("canary")]
    assert "_StopFlag" in others and set(others) <= {"_StopFlag"}, forks  # DataLoader workers, the PQ pool


def test_a_failed_rank_keeps_ignoring_sigterm_past_tools_train_s_after_job_handler(monkeypatch):
    """tools/train.py's after-the-job handler (stop_signals_after_its_job) used to put the default
    SIGTERM action back when a failed rank's job ended, undoing ignore_stop_signals_to_the_end:
    torchrun's SIGTERM then killed rank 0 on its way out (-15 in its report, not 2; seen in a full
    CI run of test_distributed_adversarial's bad-image test)."""
    import signal

    from panfpn.utils import stop_signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(stop_signals, "_IGNORED_TO_THE_END", False)
    try:
        with pytest.raises(RuntimeError):
            with stop_signals.stop_signals_after_its_job("tools/train.py"):
                stop_signals.ignore_stop_signals_to_the_end()  # the failed rank, in job_stop_signals
                raise RuntimeError("rank 1 failed")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
