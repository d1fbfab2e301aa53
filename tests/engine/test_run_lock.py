"""One live training per run folder: a second one fails at once naming the holder; the lock is
released on every way out, and a dead holder's lock is taken over with a warning."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from panfpn.engine.training.run_lock import LOCK_FILE, RunDirBusyError, RunDirLock, read_record
from panfpn.engine.train_run import train_from_config
from process_helpers import run as run_in_group, started
from tests.engine.test_train import wrap_forward

ROOT = Path(__file__).resolve().parents[2]
NO_EVAL = ("train.eval_period=-1", "solver.max_iter=2", "solver.schedule.steps=[1]")
# Holds the lock of argv[1] until killed; says so on stdout.
HOLDER = """
import sys, time
from panfpn.engine.training.run_lock import RunDirLock
lock = RunDirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(300)
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


@pytest.fixture
def holder(tmp_path):
    """A live process of another job holding the lock of ``tmp_path / "run"``."""
    cmd = [sys.executable, "-c", HOLDER, str(tmp_path / "run")]
    with started(cmd, env=_env(), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "locked"
        yield proc


@pytest.fixture
def warnings_logged():
    """The panfpn logger's warnings (it does not propagate to pytest's handler once set up)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("panfpn")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def assert_released(run: Path, warnings_logged) -> None:
    """No lock file left, and the next job takes the lock without taking over anything."""
    assert not (run / LOCK_FILE).exists()
    lock = RunDirLock(run)
    assert lock.acquire() is None
    lock.release()
    assert not [r for r in warnings_logged if "took over the lock" in r.getMessage()]


def test_a_second_training_into_a_held_folder_fails_at_once_naming_it_and_the_holder(tiny_cfg, tmp_path, holder):
    run = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(RunDirBusyError) as err:
        train_from_config(tiny_cfg(*NO_EVAL))
    assert time.monotonic() - start < 10  # before the model, the data or any file of the run
    message = str(err.value)
    assert f"{run} is in use by another training: pid {holder.pid} on host {socket.gethostname()}" in message
    assert str(run / LOCK_FILE) in message
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written: no log, no metrics
    assert read_record(run / LOCK_FILE)["pid"] == holder.pid  # the holder's record is untouched


def test_tools_train_into_a_held_folder_exits_2_with_the_message(tmp_path, tiny_args, holder):
    run = tmp_path / "run"
    done = run_in_group([sys.executable, str(ROOT / "tools/train.py"), *tiny_args, *NO_EVAL,
                         f"hydra.run.dir={run}"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]  # a known input error: one line (tools/train.py: ...)
    assert f"tools/train.py: {run} is in use by another training: pid {holder.pid}" in done.stderr
    assert not (run / "metrics.jsonl").exists() and not list(run.glob("*.pth"))


def test_the_lock_is_released_after_a_normal_end(tiny_cfg, tmp_path, warnings_logged):
    result = train_from_config(tiny_cfg(*NO_EVAL))
    assert result["iteration"] == 2 and not result["interrupted"]
    assert_released(tmp_path / "run", warnings_logged)


def test_the_lock_is_released_after_an_exception(tiny_cfg, tmp_path, monkeypatch, warnings_logged):
    def fail(n, out):
        if n == 2:
            raise RuntimeError("broken step")

    wrap_forward(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="broken step"):
        train_from_config(tiny_cfg(*NO_EVAL))
    assert_released(tmp_path / "run", warnings_logged)


def test_the_lock_is_released_after_sigterm(tiny_cfg, tmp_path, monkeypatch, warnings_logged):
    wrap_forward(monkeypatch, lambda n, out: signal.raise_signal(signal.SIGTERM) if n == 1 else None)
    result = train_from_config(tiny_cfg(*NO_EVAL))
    assert result["interrupted"] and result["signal"] == signal.SIGTERM
    assert_released(tmp_path / "run", warnings_logged)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill_9", "sigterm_unhandled"])
def test_the_lock_of_a_killed_holder_is_taken_over_with_a_warning(tiny_cfg, tmp_path, holder, sig,
                                                                   warnings_logged):
    run = tmp_path / "run"
    dead = holder.pid
    os.kill(dead, sig)  # dies without releasing: the kernel drops its flock, the record stays
    holder.wait(timeout=30)
    assert read_record(run / LOCK_FILE)["pid"] == dead
    result = train_from_config(tiny_cfg(*NO_EVAL))
    assert result["iteration"] == 2
    taken = [r.getMessage() for r in warnings_logged if "took over the lock" in r.getMessage()]
    assert len(taken) == 1 and f"pid {dead} on host {socket.gethostname()}" in taken[0] and str(run) in taken[0]
    assert not (run / LOCK_FILE).exists()


def test_a_lock_file_removed_by_its_releasing_holder_is_not_locked(tmp_path, monkeypatch):
    """A job that opened the lock file just before its holder released (removed) it must not
    lock that removed file while a third job locks the new one."""
    from panfpn.engine.training import run_lock

    run = tmp_path / "run"
    first, second, third = RunDirLock(run), RunDirLock(run), RunDirLock(run)
    first.acquire()
    real_flock = run_lock.fcntl.flock

    def release_first_then_flock(fd, op):  # the holder releases between second's open and flock
        first.release()
        monkeypatch.setattr(run_lock.fcntl, "flock", real_flock)
        return real_flock(fd, op)

    monkeypatch.setattr(run_lock.fcntl, "flock", release_first_then_flock)
    second.acquire()
    try:
        assert read_record(run / LOCK_FILE)["pid"] == os.getpid()
        with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}"):
            third.acquire()
    finally:
        second.release()


def _rank_main(rank, world, init_file, free_run, held_run, out_dir):
    import json

    import torch.distributed as dist

    from panfpn.engine.training.run_lock import hold_run_dir

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        with hold_run_dir(free_run) as lock:  # rank 0 holds it for the whole job
            dist.barrier()
            result["held"] = lock is not None and lock.held
            result["holder_pid"] = read_record(Path(free_run) / LOCK_FILE)["pid"]
            dist.barrier()
        try:
            with hold_run_dir(held_run):
                result["busy"] = None
        except RunDirBusyError as err:  # every rank, not only the one that tried the lock
            result["busy"] = str(err)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({**result, "pid": os.getpid()}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_rank_0_holds_the_lock_and_every_rank_fails_when_it_is_taken(tmp_path, holder):
    import json

    import torch.multiprocessing as mp

    free = tmp_path / "free"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(free), str(tmp_path / "run"), str(tmp_path)),
             nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["held"] for r in ranks] == [True, False]
    assert ranks[0]["holder_pid"] == ranks[1]["holder_pid"] == ranks[0]["pid"]
    assert not (free / LOCK_FILE).exists()
    for r in ranks:
        assert f"is in use by another training: pid {holder.pid}" in r["busy"]
