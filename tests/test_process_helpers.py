"""Processes that tests start get Python's Ctrl-C handling and never outlive their test."""

import signal
import subprocess
import sys
import time

import pytest

from process_helpers import descendants, run, started

# Prints its own pid and the pid of a grandchild it leaves sleeping, then sleeps itself.
PARENT_OF_A_SLEEPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead, not yet reaped
    except FileNotFoundError:
        return False


@pytest.fixture
def sigint_ignored():
    """As in a shell's background job (`pytest ... &`) or under nohup."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, before)


def test_children_handle_ctrl_c_even_when_pytest_ignores_it(sigint_ignored):
    done = run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
               capture_output=True, text=True, timeout=60)
    assert "default_int_handler" in done.stdout, done.stdout
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the test process is left as it was


def test_the_whole_process_group_is_killed_when_the_test_fails():
    with pytest.raises(AssertionError, match="the test failed"):
        with started([sys.executable, "-c", PARENT_OF_A_SLEEPER], stdout=subprocess.PIPE, text=True) as proc:
            grandchild = int(proc.stdout.readline())
            assert _alive(proc.pid) and _alive(grandchild)
            raise AssertionError("the test failed")
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL
    assert not _alive(grandchild)


def test_a_grandchild_in_a_session_of_its_own_is_killed_too():
    """As torchrun starts its ranks (start_new_session): before, a rank blocked in a failing test
    outlived it (found orphaned half an hour later)."""
    code = PARENT_OF_A_SLEEPER.replace("subprocess.Popen([", "subprocess.Popen(start_new_session=True, args=[")
    with pytest.raises(AssertionError, match="the test failed"):
        with started([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
            grandchild = int(proc.stdout.readline())
            assert _alive(grandchild) and descendants(proc.pid) == [grandchild]
            raise AssertionError("the test failed")
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "pid"
    code = PARENT_OF_A_SLEEPER.replace("print(child.pid, flush=True)",
                                       f"open({str(pid_file)!r}, 'w').write(str(child.pid))")
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", code], timeout=3)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
