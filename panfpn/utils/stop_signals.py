"""SIGTERM / SIGINT in tools/eval.py, predict.py, export.py and merge.py: stop at once, finish the
write in progress, say on one stderr line what was stopped and what was (not) written, exit 128 +
signal (SIGTERM 143, SIGINT 130); never 0, never a traceback. tools/train.py has its own handling
(a checkpoint at the next iteration: :mod:`panfpn.engine.train_run`).

A tool makes its handler first thing, ``STOP = stop_signals("predict")`` (a signal while torch and
the config load: the message "stopped ... while starting", exit 128 + signal), and runs its job
inside ``with STOP:``. There the first signal raises :class:`Stopped` in the main thread:
``finally`` blocks run (predict lists the images it wrote in its JSON), an atomic write removes its
temp file (:mod:`panfpn.utils.atomic`), DataLoader and process pools end their workers. The job
says what it writes with :func:`describe_outputs`; the message uses the last description, called
after the unwinding, so it tells what is on disk. A second signal aborts at once, as the default
action would (its message says so). Once the job has returned (every output written), the handler
stays for what is left of the process (hydra's end, Python's exit): a signal then says so on the
same kind of line, ``stopped by SIGTERM after the job had finished: every output was written
(...)``, and exits 128 + signal at once (``os._exit``: nothing is left to finish); before, the
default action killed the process silently, and a log could not tell whether the outputs were
complete. tools/train.py, whose job handles signals itself (its loop checkpoints), gets the same
end with :func:`stop_signals_after_its_job` (the job calls :func:`job_finished` once its last file
is written). Worker processes ignore stop signals from anyone but their parent
(:func:`ignore_foreign_stop_signals`: DataLoader ``worker_init_fn``, pool initializers) and are
ended by it (:func:`terminate_pool`); another process forked with the handler exits quietly on the
signal. A worker also says nothing when the main process,
stopped while fetching a tensor from it, hangs up on its resource_sharer thread. A signal during a
fork (workers starting) is raised after it (:mod:`panfpn.utils.fork_window`), and one in a Python
``__enter__`` / ``__exit__`` (a ``threading.Condition`` taking its lock) once out of it
(:mod:`panfpn.utils.enter_exit_window`: the lock left held hung the DataLoader's shutdown).

In a multi-process job (torchrun: ``RANK`` / ``WORLD_SIZE``), rank 0 alone says the line; a rank
stopped or failing leaves a note that the others read (:mod:`panfpn.engine.rank_errors`), and rank 0,
ending because of it, says :class:`EndedElsewhere`'s one line (``rank 1 was stopped by SIGTERM``,
``rank 1 failed: BadImageError: ...``; every rank so ended exits as that rank did: 128 + signal, 2
for an input error, else 1) instead of its own consequence (a closed connection, the
launcher's SIGTERM). A second signal there is noted, not an abort: the launcher stops its ranks
itself (torchrun passes a Ctrl-C or SIGTERM on to each rank, which runs in a session of its own, and
kills them 30 s later; srun's tasks also get what scancel sends). :func:`defer_stop_signals` (where a failure
is being handled) makes the active handlers note signals instead of raising them.
Standard library only: tools/merge.py imports no torch on the CPU.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Collection, Iterator, Mapping

from panfpn.utils.enter_exit_window import signal_when_out
from panfpn.utils.fork_window import forking, signal_after_fork, watch_forks
from panfpn.utils.launch_env import launch_rank, launched_as_several

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """A stop signal reached the tool: raised in the main thread by the handler. A KeyboardInterrupt,
    so that what already handles Ctrl-C (torch's DataLoader, ``except Exception`` skipping it) treats
    it alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


class EndedElsewhere(Exception):
    """The job ends because another of its processes failed or was stopped (raised by the ranks
    that learn of it: :class:`panfpn.engine.rank_errors.OtherRankFailedError`). A tool says
    ``summary`` on one stderr line (rank 0), no traceback (that process printed its own), and exits
    with :meth:`exit_status`."""

    summary: str = ""
    signum: int | None = None
    input_error: bool = False  # that process ended on a known input error, with exit status 2

    def exit_status(self) -> int:
        """128 + the signal that stopped that process; 2 when it ended on a known input error (as
        that process did: :mod:`panfpn.engine.tool_errors`), so that every rank says "input"; else 1."""
        if self.signum:
            return 128 + self.signum
        return 2 if self.input_error else 1


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def install_stop_handler(handler: Callable[[int, Any], Any], skip: Collection[int] = ()) -> dict[int, Any]:
    """``handler`` for SIGTERM and SIGINT (not those in ``skip``, nor one set to be ignored, as nohup
    sets it: left ignored); returns the handlers it replaced, for :func:`restore_handlers`. Outside
    the main thread signals cannot be caught: nothing is installed."""
    previous: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        try:
            if sig not in skip and signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore_handlers(previous: Mapping[int, Any]) -> None:
    """Put back the handlers :func:`install_stop_handler` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def ignore_stop_signals_to_the_end() -> None:
    """A rank of a multi-process job on its way out with its exit status (an error written, a stop
    said): SIGTERM and SIGINT ignored from now on. ``SIG_IGN`` outlives Python's exit, which puts a
    Python handler back to the default action before torch's own teardown (a gloo process group's:
    seconds); torchrun's SIGTERM to the ranks left, sent as the failed rank's exit closed the
    connections, then killed the rank there (-15 in torchrun's report, not its 2). The launcher
    still ends a rank that hangs (torchrun: SIGKILL 30 s after its SIGTERM)."""
    global _IGNORED_TO_THE_END
    _IGNORED_TO_THE_END = True  # no handler put back on the way out (stop_signals_after_its_job)
    install_stop_handler(signal.SIG_IGN)


_IGNORED_TO_THE_END = False  # set by ignore_stop_signals_to_the_end: SIG_IGN stays


_DEFERRABLE: list[Any] = []  # the active handlers with a defer(): the tool's, the training job's


@contextmanager
def deferrable(handler: Any) -> Iterator[None]:
    """While the block runs, :func:`defer_stop_signals` calls ``handler.defer()``."""
    _DEFERRABLE.append(handler)
    try:
        yield
    finally:
        _DEFERRABLE.remove(handler)


def defer_stop_signals() -> None:
    """The running job is failing: a stop signal from now on is noted, not raised (it would replace
    the error on its way out). Called first thing where a failure is handled."""
    for handler in _DEFERRABLE:
        handler.defer()


class StopSignals:
    """The handler of one tool run (see the module docstring); :func:`stop_signals` makes one."""

    def __init__(self, tool: str) -> None:
        self.tool, self.pid = tool, os.getpid()
        self.signum: int | None = None
        self.running = self.deferred = self.finished = False
        self.describe: Callable[[], str] | None = None
        self._previous: dict[int, Any] = {}
        self._install()

    def _install(self) -> None:
        self._previous.update(install_stop_handler(self._handle, skip=self._previous))

    def __enter__(self) -> "StopSignals":
        global _ACTIVE
        self._install()  # again for the next job of a hydra multirun
        watch_forks()  # now that the modules with at-fork callbacks are imported
        self.signum, self.describe = None, None
        self.running, self.deferred, self.finished, _ACTIVE = True, False, False, self
        _DEFERRABLE.append(self)
        return self

    def defer(self) -> None:
        """From now on a signal is noted, not raised: a failure is being handled."""
        self.deferred = True

    def _handle(self, signum: int, frame: Any) -> None:
        if forking():  # in an at-fork callback, which would drop the exception: again after the fork
            signal_after_fork(signum)
            return
        if os.getpid() != self.pid:
            # A forked process that kept this handler (a pool worker before its initializer ran
            # ignore_foreign_stop_signals, any other fork): exit quietly through ``with`` blocks, which
            # releases the locks it holds; the default action would not (a pool's queue lock held by
            # a dead worker makes the parent's Pool.terminate() wait forever).
            if signal_when_out(signum, frame):  # not from a lock's __enter__: again once out of it
                return
            raise SystemExit(128 + signum)
        if self.finished:  # the job returned: nothing to unwind, and an exception may be dropped now
            self._say(f"stopped by {signal_name(signum)} after the job had finished: every output was "
                      f"written ({self._written()})")
            sys.stderr.flush()
            os._exit(128 + signum)
        if self.signum is not None and (self.deferred or launched_as_several()):  # the launcher ends it
            return
        if self.deferred:
            self.signum = signum
            return
        if self.signum is not None:  # a second signal: abort at once, as its default action does
            self._say(f"{signal_name(signum)} again: aborted at once; the write in progress may have "
                      "left a temp file (.<name>.<random>.tmp...) beside its target")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signal_when_out(signum, frame):  # raised in an __enter__, it would leave its lock held
            return
        self.signum = signum
        if not self.running:  # imports, config: nothing started, nothing written
            self._say(f"stopped by {signal_name(signum)} while starting; nothing written")
            raise SystemExit(128 + signum)
        raise Stopped(signum)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        global _ACTIVE
        self.running, _ACTIVE = False, None
        if self in _DEFERRABLE:
            _DEFERRABLE.remove(self)
        # another rank's end, unless a Ctrl-C stopped every rank (torchrun passes it on)
        ended = isinstance(exc, EndedElsewhere) and self.signum != signal.SIGINT
        if self.signum is None and not ended:
            if exc is None:  # done: the handler stays for the rest of the process (module docstring)
                self.finished = True
                return False
            restore_handlers(self._previous)
            self._previous.clear()
            return False  # no signal: any exception goes on as it came
        # Exiting with a message: this handler stays, noting signals (torchrun's SIGTERM to the ranks
        # left); the previous one would kill the process before its message. A rank of a launched
        # job ignores them to its very end (torch's teardown comes after Python's handlers are gone).
        self.deferred = True
        if launched_as_several():
            ignore_stop_signals_to_the_end()
        if ended:
            self._say(f"{exc.summary}; {self._written()}")  # type: ignore[union-attr]
            sys.exit(exc.exit_status())  # type: ignore[union-attr]
        text = self._written()
        if exc is not None and not isinstance(exc, (Stopped, SystemExit)):  # e.g. a worker's pipe closing
            text += f" (then {type(exc).__name__}: {exc})"
        self._say(f"stopped by {signal_name(self.signum)} {text}")
        sys.exit(128 + self.signum)  # type: ignore[operator]

    def _written(self) -> str:
        return _call(self.describe) if self.describe is not None else "before writing any output"

    def _say(self, text: str) -> None:
        if launch_rank() != 0:  # rank 0 says it for the job (another rank's stop: EndedElsewhere)
            return
        sys.stdout.flush()
        print(f"{self.tool}: {text}", file=sys.stderr, flush=True)


def _call(describe: Callable[[], str]) -> str:
    try:
        return describe()
    except Exception as err:  # the message must still come out: say that the description failed
        return f"(what was written is unknown: {type(err).__name__}: {err})"


_ACTIVE: StopSignals | None = None


def stop_signals(tool: str) -> StopSignals:
    """The tool's handling of SIGTERM / SIGINT, installed now (module docstring); the job runs in
    ``with`` the result. ``tool`` starts the message."""
    return StopSignals(tool)


_AFTER: StopSignals | None = None  # the handler of stop_signals_after_its_job, while its block runs


@contextmanager
def stop_signals_after_its_job(tool: str) -> Iterator[StopSignals]:
    """For a tool whose job handles SIGTERM / SIGINT itself (tools/train.py: its loop checkpoints):
    the tool's handler, installed now, under the job's own handlers (which put it back as they
    end). Once the job has called :func:`job_finished`, it stays for the rest of the process, as
    after the job of a ``with`` :func:`stop_signals` (module docstring); otherwise the previous
    handlers are back when the block ends. A signal before the job installs its own ends the tool
    as one while starting does."""
    global _AFTER
    handler = _AFTER = StopSignals(tool)
    try:
        yield handler
    finally:
        _AFTER = None
        # stopped, failed or interrupted: the job's own ending says it; a failed rank of a
        # multi-process job keeps ignoring the launcher's SIGTERM (ignore_stop_signals_to_the_end)
        if not handler.finished and not _IGNORED_TO_THE_END:
            restore_handlers(handler._previous)


def job_finished(describe: Callable[[], str]) -> None:
    """The job has written every output (``describe()`` says what, as for :func:`describe_outputs`):
    from now on a stop signal to the tool of :func:`stop_signals_after_its_job` says ``stopped by
    SIGTERM after the job had finished: every output was written (...)`` and exits 128 + signal.
    No-op outside that block (a job called from Python, a multirun's job: the sweep goes on)."""
    if _AFTER is not None:
        _AFTER.describe, _AFTER.finished = describe, True


def stopped_after_the_job(signum: int) -> None:
    """A signal that the job's handler noted while the job wrote its last outputs, passed on once
    they are written and its handler is gone: the tool of :func:`job_finished` says its line and
    exits now; anywhere else nothing happens (from Python the job returns: it is done)."""
    if _AFTER is not None and _AFTER.finished:
        _AFTER._handle(signum, None)


def describe_outputs(describe: Callable[[], str]) -> None:
    """What a stop now leaves written: ``describe()`` (called after the unwinding) continues the
    message "<tool>: stopped by SIGTERM ...", e.g. ``"after 12 of 40 images; ..."``. No-op outside
    :func:`stop_signals` (a job called from Python, a test)."""
    if _ACTIVE is not None:
        _ACTIVE.describe = describe


def ignore_foreign_stop_signals() -> None:
    """In a worker process (DataLoader ``worker_init_fn``, ``multiprocessing.Pool`` initializer):
    ignore SIGINT, and SIGTERM unless the parent sent it (its shutdown: the worker exits at once).
    A signal to the whole group (Slurm, ``kill -- -PGID``, Ctrl-C) thus leaves the stopping to the
    parent: a pool worker killed mid-way can die holding the pool's queue lock or leave half a
    result in its pipe, and the parent's ``Pool.terminate()`` then waits forever; a dead DataLoader
    worker fails the parent with "DataLoader worker ... killed by signal". See
    :func:`panfpn.data.loader.ignore_stop_signals`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_when_a_receiver_hangs_up()
    if not hasattr(signal, "sigwaitinfo"):  # no sender to tell apart: the default handling
        return
    parent = os.getppid()
    # Blocked here (threads started later inherit it), taken by the thread below with its sender.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a thread that does not block it ignores it
    threading.Thread(target=_exit_on_parents_sigterm, args=(parent,), name="sigterm-from-parent",
                     daemon=True).start()


def _quiet_when_a_receiver_hangs_up() -> None:
    """A worker hands each tensor it sends over as a file descriptor, from multiprocessing's
    resource_sharer thread, to the process that connects for it. A stop signal in that process in
    the middle of the handshake breaks the connection off, and the thread printed the EOFError /
    ConnectionError as a traceback after the tool's one line (seen once in 9 ``timeout -s TERM``
    runs of tools/eval.py). The receiver tells its own story (its stop message, its own error): a
    hang-up is left unsaid here; any other error of that thread is printed as before."""
    from multiprocessing import resource_sharer

    serve = getattr(getattr(getattr(resource_sharer, "_ResourceSharer", None), "_serve", None), "__code__", None)
    if serve is None:  # another Python's internals: its thread's errors are printed as they come
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not (issubclass(exc_type, (EOFError, ConnectionError)) and tb is not None
                and tb.tb_frame.f_code is serve):
            previous(exc_type, exc, tb)

    sys.excepthook = hook  # the thread calls sys.excepthook itself (not threading.excepthook)


def _exit_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)  # as torch's handler does on its parent's SIGTERM


def terminate_pool(pool: Any, timeout: float = 5.0) -> None:
    """``pool.terminate()`` (a ``multiprocessing.Pool`` whose workers ran
    :func:`ignore_foreign_stop_signals`) that cannot hang: a worker that misses the parent's SIGTERM
    (it came while a SIGTERM sent to the whole group was still pending: the two merge into one,
    from the other sender) is killed after ``timeout`` seconds. Call it on the way out of an error
    or a stop signal, inside the ``with`` of the pool (whose own terminate() is then a no-op)."""
    import multiprocessing

    stopping = threading.Thread(target=pool.terminate, name="pool-terminate", daemon=True)
    stopping.start()
    stopping.join(timeout)
    if stopping.is_alive():  # waiting for a worker that ignored the SIGTERM it was meant to get
        for child in multiprocessing.active_children():
            child.kill()
        stopping.join(timeout)
