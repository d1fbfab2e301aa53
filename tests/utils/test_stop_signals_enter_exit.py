"""panfpn.utils.stop_signals with the signal in a Python ``__enter__`` (panfpn/utils/enter_exit_window.py):
the stop comes out of the ``with`` body, so the lock that ``__enter__`` took is released, and a
process blocked in an ``__enter__`` is still stopped. Standard library only: fast. The tool that hung
so: tests/engine/test_tool_signals.py (eval, its DataLoader's queue lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from process_helpers import run, started

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = textwrap.dedent("""
    import os, signal, sys, threading, time
    from panfpn.utils.stop_signals import StopSignals, stop_signals
    got, handle = [], StopSignals._handle
    def counting(self, signum, frame):
        got.append(signum)
        return handle(self, signum, frame)
    StopSignals._handle = counting  # before the handler is made: it installs its bound method
    STOP = stop_signals("t")
    lock = threading.Lock()
""")

# The signal comes inside __enter__, once the lock is taken (as in threading.Condition.__enter__).
# takes the lock, then signals itself and waits for the handler (a Condition's __enter__, widened)
HOLDING = textwrap.dedent("""
    class Holding:
        def __enter__(self):
            lock.acquire()
            os.kill(os.getpid(), signal.SIGTERM)
            while not got:
                time.sleep(0.001)
            return self
        def __exit__(self, *exc):
            lock.release()
""")
SIGNAL_IN_ENTER = PRELUDE + HOLDING + textwrap.dedent("""
    try:
        with STOP:
            with Holding():
                while True:
                    time.sleep(0.01)
    finally:
        print("lock held" if lock.locked() else "lock released", flush=True)
""")

# __enter__ waits for a lock that is never released; the test sends the signal.
BLOCKED_IN_ENTER = PRELUDE + textwrap.dedent("""
    lock.acquire()
    class Waiting:
        def __enter__(self):
            print("waiting", flush=True)
            lock.acquire()
        def __exit__(self, *exc):
            pass
    with STOP:
        with Waiting():
            pass
""")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_a_stop_in_an_enter_that_took_a_lock_comes_once_the_with_holds_it():
    # Before: Stopped came out of __enter__, the with statement never called __exit__ and the lock
    # stayed held (in tools/eval.py, a DataLoader queue's: its __del__ then waited forever).
    done = run([sys.executable, "-c", SIGNAL_IN_ENTER], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stdout == "lock released\n", done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "t: stopped by SIGTERM before writing any output"


def test_a_process_blocked_in_an_enter_is_still_stopped():
    # The stop is put off while in an __enter__ for at most enter_exit_window.LIMIT_S (1 s).
    with started([sys.executable, "-c", BLOCKED_IN_ENTER], env=_env(), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline() == "waiting\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "t: stopped by SIGTERM before writing any output"
    assert took < 15, took  # LIMIT_S and a loaded machine


# The same in a training job's start (panfpn.engine.training.job_signals: JobStopped, raised outside
# the loop): the signal comes inside __enter__ once the lock is taken.
JOB_SIGNAL_IN_ENTER = textwrap.dedent("""
    import os, signal, threading, time
    from panfpn.engine.training.job_signals import JobSignals, JobStopped, job_stop_signals
    got, handle = [], JobSignals.handle
    def counting(self, signum, frame):
        got.append(signum)
        return handle(self, signum, frame)
    JobSignals.handle = counting
    lock = threading.Lock()
""") + HOLDING + textwrap.dedent("""
    try:
        with job_stop_signals():
            with Holding():
                while True:
                    time.sleep(0.01)
    except JobStopped as stopped:
        print("stopped", stopped.signum, flush=True)
    print("lock held" if lock.locked() else "lock released", flush=True)
""")


def test_a_training_job_stopped_in_an_enter_that_took_a_lock_releases_it():
    # Before: JobStopped came out of __enter__ and the lock stayed held.
    done = run([sys.executable, "-c", JOB_SIGNAL_IN_ENTER], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"stopped {int(signal.SIGTERM)}\nlock released\n", done.stdout + done.stderr
