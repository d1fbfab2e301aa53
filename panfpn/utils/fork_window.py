"""Whether this process is inside ``os.fork()``, its at-fork callbacks included, for the stop-signal
handler of :mod:`panfpn.utils.stop_signals`; and the signal that came then, sent again after it.

A signal that comes while fork() copies the process (milliseconds for a process holding a model: a
DataLoader or pool starting its workers) runs its Python handler in the first Python code after
the system call: an at-fork callback, logging's ``_releaseLock``. An exception raised there is
printed as "Exception ignored in: <function _releaseLock>" with its traceback and dropped: the stop
was lost and tools/eval.py went on to the end (seen in 2 of 21 SIGTERMs to its process group). So
the handler asks :func:`forking` first and, inside a fork, has the signal sent again once the fork
is over (:func:`signal_after_fork`) instead of raising.

The flag is set and cleared by callbacks that are C functions (no Python code runs in them, so no
handler either), registered by :func:`watch_forks` after logging's: the before-fork callbacks run in
the reverse order of registration, so the flag is up before logging's runs, the after-fork ones in
order, so it comes down after. Standard library only.
"""

from __future__ import annotations

import functools
import os
import threading
import time

_STATE = {"forking": False}
_WATCHING: list[int] = []  # the pid that registered the callbacks (a forked child inherits them)


def watch_forks() -> None:
    """Register the callbacks that keep :func:`forking` up to date (once per process). Call it late,
    when the job starts: the callbacks of modules imported after this one run outside the flag."""
    if _WATCHING or not hasattr(os, "register_at_fork"):
        return
    import logging  # noqa: F401  (its callbacks are registered first: see the module docstring)

    up = functools.partial(_STATE.__setitem__, "forking", True)
    down = functools.partial(_STATE.__setitem__, "forking", False)
    os.register_at_fork(before=up, after_in_parent=down, after_in_child=down)
    _WATCHING.append(os.getpid())


def forking() -> bool:
    """Whether this process is inside ``os.fork()`` (a signal handler runs in its callbacks)."""
    return _STATE["forking"]


def signal_after_fork(signum: int) -> None:
    """Send ``signum`` to this process again once the fork in progress is over: its handler then
    runs in the code that called fork, where an exception it raises goes up as any other."""
    pid = os.getpid()

    def again() -> None:
        while _STATE["forking"]:
            time.sleep(0.001)
        os.kill(pid, signum)

    threading.Thread(target=again, name="stop-signal-after-fork", daemon=True).start()
