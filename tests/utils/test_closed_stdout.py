"""panfpn.utils.closed_stdout: prints to a stdout whose reader has gone end quietly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]

PRINTS = textwrap.dedent("""
    from panfpn.utils.closed_stdout import stdout_reader_may_leave
    with stdout_reader_may_leave():
        for i in range(100000):
            print("row", i)
    print("after the block: still quiet")
""")


def _with_closed_reader(code: str) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited
    try:
        return run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60,
                   stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)


def test_prints_to_a_closed_pipe_end_quietly():
    done = _with_closed_reader(PRINTS)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_without_it_python_prints_a_traceback():
    # what tools/summarize.py, data.check and pq printed before (the condition the helper handles)
    done = _with_closed_reader(PRINTS.replace("with stdout_reader_may_leave():", "if True:"))
    assert "BrokenPipeError" in done.stderr
