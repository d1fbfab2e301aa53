"""Start processes from tests so that none outlives its test.

Each child leads a new session (its own process group, so that a signal or a kill reaches the
workers it starts too: DataLoader workers) and starts with Python's default
Ctrl-C handling even when the shell that started pytest ignores SIGINT (``pytest ... &``). When the
test ends, pass or fail (an assertion, a timeout), the whole group is killed, and every descendant
in a session of its own: torchrun starts each rank so (``start_new_session``), and a rank that a
failing test left blocked outlived it, orphaned, when only the group was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    # An ignored signal stays ignored across exec, a handled one is reset to the default: install a
    # handler while the child is started, so that it never inherits SIG_IGN for SIGINT.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, start_new_session=True, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def live_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    return [pid for pid, (state, _, group) in _processes().items() if group == pgid and state != "Z"]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    state = _processes().get(pid)
    return state is not None and state[0] != "Z"


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (children, theirs, ...), whatever their group or session."""
    table = _processes()
    below, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (state, ppid, _) in table.items() if ppid == parent and state != "Z"]
        below += children
        todo += children
    return below


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (whatever is left of it) and the descendants in
    sessions of their own, and reap ``proc``."""
    others = descendants(proc.pid)  # before the kill: their parents' deaths orphan them
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the leader and all its children are gone
        pass
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
    proc.wait(timeout=30)


@contextmanager
def started(cmd: list[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(cmd, **kwargs)`` in a new process group, killed (the whole group) when
    the ``with`` block ends, however it ends."""
    proc = _popen(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


@contextmanager
def run_lock_held(folder: Path) -> Iterator[subprocess.Popen]:
    """A live process holding ``folder``'s run lock (``train.lock``, as a training does) while the
    ``with`` block runs; it is killed after, its lock record left behind."""
    root = Path(__file__).resolve().parents[1]
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(root)!r})
        from panfpn.engine.training.run_lock import RunDirLock
        RunDirLock({str(folder)!r}).acquire()
        print('held', flush=True)
        time.sleep(120)
    """)
    with started([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "held"
        yield proc


def run(cmd: list[str], *, timeout: float | None = None, capture_output: bool = False, check: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess:
    """Like ``subprocess.run``, but its whole process group is killed when it times out or the
    caller is interrupted, and whatever it left behind when it ends."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with started(cmd, **kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done
