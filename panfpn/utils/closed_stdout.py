"""Printing to a stdout its reader may close early (``tool | head``): the rest of the output is
dropped quietly instead of a BrokenPipeError traceback (and a second one as Python flushes at exit)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def stdout_reader_may_leave() -> Iterator[None]:
    """Run the block's prints; if stdout's reader has gone, stop printing there and point stdout at
    /dev/null so that nothing more fails. Write files before the block: they must not depend on it."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
