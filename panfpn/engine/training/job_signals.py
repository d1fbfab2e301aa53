"""SIGTERM / SIGINT around a training job outside its loop (the loop checkpoints on them:
``train_run._StopFlag``): while the job starts (config, data, model) and while it writes how it
ended (``job_status.json``, ``eval_results.json``: after an error, or after the loop).

Without a handler there, the default action killed the process at once and ``job_status.json``
was never written. That is what happened to rank 0 of a torchrun job when another rank failed:
torchrun sends SIGTERM to the remaining ranks, and rank 0, on its way to writing the failure
(rank 1's error, read by :mod:`panfpn.engine.rank_errors`), died first under load.

:func:`job_stop_signals` makes the first signal raise :class:`JobStopped` (a KeyboardInterrupt,
so that what handles Ctrl-C handles it too) while the job runs; after :meth:`JobSignals.defer`
(the job is failing and writes its status) signals are only noted, and the job ends with the
error it already has. :func:`defer_stop_signals` does that from where a failure is first handled
(rank 0 reading another rank's error: a second SIGTERM from torchrun replaced that error). Once a
finished job has written its outcome, tools/train.py's own handler takes over for the rest of the
process (:func:`panfpn.utils.stop_signals.stop_signals_after_its_job`: one line, exit 128 + signal);
a signal noted while the outcome was written goes to it then (:func:`_pass_on`).

Unlike the tools' handler (:mod:`panfpn.utils.fork_window`), this one has no guard for a signal
that comes while a process is forked (raised in an at-fork callback, :class:`JobStopped` would be
dropped and the stop lost): no process is forked while it raises. A training forks its DataLoader
workers (the training loader's, each evaluation's) inside the loop, where the loop's handler
(``train_run._StopFlag``) only sets a flag, which an at-fork callback does not lose; its evaluation
computes PQ in the process (the PQ process pool is :func:`panfpn.evaluation.pq.pq_compute`'s:
tools/merge.py, the command line); a subprocess (fork + exec) runs no Python code in between.
(After a first signal in the loop this handler is back, for a second one to abort at once; a
worker can still be forked then, in the milliseconds before the loop stops: the evaluation's
workers when the signal came just before it started, the training loader's next worker. A second
signal in that fork loses its abort, not the stop: the loop stops at the next iteration with its
checkpoint, as on the first signal.) The guard is not added anyway because it would be partial here: :func:`~panfpn.utils.fork_window.watch_forks`
must register after every module's at-fork callbacks (the tools call it once their imports are
done), and this handler is installed before torch and the job's modules are imported (a SIGTERM
while they load must be caught). tests/engine/test_job_signals.py pins the claim: a fork under this
handler (a pool in the start checks, say) fails it; give :meth:`JobSignals.handle` the guard of
``StopSignals._handle`` (and a late ``watch_forks()``) then.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator

from panfpn.engine.tool_errors import in_multirun
from panfpn.utils.enter_exit_window import signal_when_out
from panfpn.utils.launch_env import launched_as_several
from panfpn.utils.stop_signals import (  # noqa: F401 - defer_stop_signals: the job's too
    defer_stop_signals, deferrable, ignore_stop_signals_to_the_end, install_stop_handler, restore_handlers,
    signal_name, stopped_after_the_job,
)


class JobStopped(KeyboardInterrupt):
    """A stop signal reached the training job outside its loop, or a second one in it: no checkpoint."""

    def __init__(self, signum: int) -> None:
        # outside the loop, or a second signal in it (the first one's checkpoint was not waited for)
        super().__init__(f"stopped by {signal_name(signum)} without saving a checkpoint (while starting, "
                         "or a second signal)")
        self.signum = signum


class JobStoppedError(Exception):
    """:class:`JobStopped` as an Exception, raised by tools/train.py in a multirun: hydra's job runner
    catches only Exception, so a KeyboardInterrupt went past its sweep callback (no summary, a
    traceback, exit status 130 for a SIGTERM); caught, the callback stops the sweep with 128 + signal."""

    def __init__(self, stopped: JobStopped) -> None:
        super().__init__(str(stopped))
        self.signum = stopped.signum


class JobSignals:
    """The job's handler: raises :class:`JobStopped`, or after :meth:`defer` only notes the signal."""

    def __init__(self) -> None:
        self.deferred = False
        self.noted: int | None = None
        self.pid = os.getpid()

    def defer(self) -> None:
        """From now on a signal is noted, not raised: the job is writing how it ended."""
        self.deferred = True

    def handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a process forked meanwhile (a data pool): the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.deferred:
            self.noted = signum
            return
        if signal_when_out(signum, frame):  # raised in a lock's __enter__, it would leave the lock held
            return
        raise JobStopped(signum)


@contextmanager
def job_stop_signals() -> Iterator[JobSignals]:
    """SIGTERM and SIGINT handled as :class:`JobSignals` says while the block runs (main thread
    only; a signal the launcher set to be ignored stays ignored); the previous handlers after,
    except for a rank of a multi-process job that failed (it wrote how, :meth:`JobSignals.defer`):
    it ignores them to the end (:func:`ignore_stop_signals_to_the_end`), or torchrun's SIGTERM to
    the ranks left killed it on its way out, before its exit status (2: another rank's input error).
    A signal noted while a finished job wrote its outcome is passed on once it is written (:func:`_pass_on`)."""
    handler = JobSignals()
    previous = install_stop_handler(handler.handle)
    failed = True
    try:
        with deferrable(handler):
            yield handler
        failed = False
    finally:
        if failed and handler.deferred and launched_as_several() and previous:  # main thread only
            ignore_stop_signals_to_the_end()
        else:
            restore_handlers(previous)
        if not failed and handler.noted is not None:  # while a finished job wrote its outcome
            _pass_on(handler.noted)


def _pass_on(signum: int) -> None:
    """A signal noted while a finished job wrote its outcome, now that it is written: tools/train.py's
    handler for after the job says its line; in a multirun, the handlers the sweep runs under get
    it (a Ctrl-C or SIGTERM stops the sweep with its summary, as between two jobs);
    from Python it stays noted and the job returns (it is done)."""
    if in_multirun():
        signal.raise_signal(signum)
    else:
        stopped_after_the_job(signum)
