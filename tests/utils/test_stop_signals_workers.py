"""panfpn.utils.stop_signals in a worker process: what its multiprocessing resource_sharer thread (the
one that hands tensors over as file descriptors) says when a receiver hangs up. Standard library
only: fast. The whole tool, stopped in that handshake: tests/engine/test_tool_signals.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# argv[1] "worker": as a DataLoader / pool worker (ignore_foreign_stop_signals), "plain": as is.
SCRIPT = textwrap.dedent("""
    import os, sys
    from multiprocessing import current_process, resource_sharer
    from multiprocessing.connection import Client
    from panfpn.utils.stop_signals import ignore_foreign_stop_signals
    if sys.argv[1] == "worker":
        ignore_foreign_stop_signals()
    r, w = os.pipe()
    address, _ = resource_sharer.DupFd(r)._id  # starts the sharer's thread
    Client(address).close()  # a receiver that hangs up in the handshake (a stop signal there)
    wrong = Client(address, authkey=current_process().authkey)
    wrong.send((999, os.getpid()))  # an unknown key: the thread's KeyError, a real error
    wrong.close()
    os.close(resource_sharer.DupFd(w).detach())  # served after both: their output is out
    print("served", flush=True)
""")


def _run(mode: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "served\n", done.stderr
    return done.stderr


def test_a_worker_says_nothing_when_a_receiver_hangs_up_but_still_reports_other_errors():
    # Before: the hang-up's EOFError traceback from resource_sharer.py (after the tool's "stopped by"
    # line when the main process was stopped while fetching a batch).
    err = _run("worker")
    assert "KeyError" in err and "resource_sharer.py" in err, err
    assert err.count("Traceback") == 1, err  # the KeyError's only


def test_outside_a_worker_the_hang_up_is_printed_as_python_does():
    # The same script as plain Python: the hang-up above is a real one (the check is not vacuous).
    err = _run("plain")
    assert err.count("Traceback") == 2 and "KeyError" in err, err  # the hang-up's (EOF, reset or broken pipe)
