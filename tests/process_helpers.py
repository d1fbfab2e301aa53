"""Start processes from tests so that none outlives its test.

Each child leads a new session (its own process group, so that a signal or a kill reaches the
workers it starts too: torchrun's ranks, DataLoader workers) and starts with Python's default
Ctrl-C handling even when the shell that started pytest ignores SIGINT (``pytest ... &``). When the
test ends, pass or fail (an assertion, a timeout), the whole group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
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


def live_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (whatever is left of it) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the leader and all its children are gone
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
