"""Whether a stop signal's exception, raised now in the main thread, would come out of a Python
``__enter__`` or ``__exit__``; and, if so, the signal sent again a moment later instead, for the
stop-signal handler of :mod:`panfpn.utils.stop_signals`.

A Python signal handler runs between any two bytecodes. ``threading.Condition.__enter__`` is Python
code around the C lock: an exception raised in it once the lock is taken leaves the ``with``
statement without its ``__exit__``, and the lock stays held for good. That hung tools/eval.py (3
of 30 runs under load): a SIGTERM as its DataLoader worker started (sent again after the fork:
:mod:`panfpn.utils.fork_window`) came while the DataLoader filled the worker's index queue
(``multiprocessing.Queue.put``); the stop line was said, then the iterator's ``__del__`` put its
end marker in that queue and waited forever for the lock its own thread held. The same goes for
an ``__exit__`` stopped before it has released what it holds, and for ``@contextmanager``
generators (their code runs below ``__enter__`` / ``__exit__``).

So while any frame of the main thread's stack is in an ``__enter__`` / ``__exit__``,
:func:`signal_when_out` has the signal sent again a few milliseconds later (these windows last
microseconds), for at most :data:`LIMIT_S` seconds: a main thread blocked in one (a ``with lock:``
waiting for the lock, where raising is safe) is stopped then as before. Standard library only.
"""

from __future__ import annotations

import os
import threading
import time
from types import FrameType

LIMIT_S = 1.0  # longest delay of a stop: then it is raised even inside an __enter__ / __exit__
AGAIN_S = 0.005  # the signal is sent again after this long

_ENTER_EXIT = frozenset({"__enter__", "__exit__", "__aenter__", "__aexit__"})
# pid -> when this process first put off the stop, while a signal is to come again (none else is sent)
_PUT_OFF: dict[int, float] = {}
_AGAIN_PENDING: set[int] = set()


def in_enter_or_exit(frame: FrameType | None) -> bool:
    """Whether ``frame`` (a signal handler's) or one of its callers runs an ``__enter__`` or
    ``__exit__`` method."""
    while frame is not None:
        if frame.f_code.co_name in _ENTER_EXIT:
            return True
        frame = frame.f_back
    return False


def signal_when_out(signum: int, frame: FrameType | None) -> bool:
    """``True`` when the handler must not raise now: ``frame`` is in an ``__enter__`` / ``__exit__``
    (:func:`in_enter_or_exit`) and the stop has waited less than :data:`LIMIT_S`; ``signum`` then
    comes again in :data:`AGAIN_S` (a signal that comes meanwhile is that one: nothing more is
    sent). ``False``: raise now."""
    pid = os.getpid()
    if pid in _AGAIN_PENDING:  # the one already coming stands for this one too, as the kernel merges them
        return True
    now = time.monotonic()
    if not in_enter_or_exit(frame) or now - _PUT_OFF.setdefault(pid, now) >= LIMIT_S:
        _PUT_OFF.pop(pid, None)
        return False
    _AGAIN_PENDING.add(pid)

    def again() -> None:
        time.sleep(AGAIN_S)
        _AGAIN_PENDING.discard(pid)
        os.kill(pid, signum)

    threading.Thread(target=again, name="stop-signal-out-of-enter-exit", daemon=True).start()
    return True
