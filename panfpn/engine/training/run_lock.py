"""One live training per run folder: an exclusive ``flock`` on ``<run dir>/train.lock``.

Two trainings started into the same folder (two ``resume=true`` jobs, a Slurm requeue while the
old job still runs) would overwrite each other's checkpoints and log every iteration twice. The
first one to start holds the lock; the second fails at once naming the folder and the holder.

The kernel releases a ``flock`` when its process dies, however it dies (``kill -9``, a crashed
node's NFS lease expiring), so a lock is never stale by itself. The JSON record inside the file
(pid, host, start time, Slurm job) is only there for messages: a record left behind by a process
that ended without releasing the lock is taken over with a warning. On a normal end, an error or
a handled SIGTERM the lock file is removed.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from panfpn.engine import distributed as du
from panfpn.utils.file_lock import UNSUPPORTED, locked_fd

logger = logging.getLogger("panfpn")
LOCK_FILE = "train.lock"


class RunDirBusyError(RuntimeError):
    """Another live training holds the run folder's lock."""


def _record() -> dict[str, Any]:
    """What a waiting job's error message shows about this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def describe_holder(record: dict[str, Any] | None) -> str:
    """``pid 123 on host n01 (started ..., Slurm job 42)`` from a lock record."""
    if not record:
        return "a process whose record is unreadable or not yet written"
    extra = f", Slurm job {record['slurm_job']}" if record.get("slurm_job") else ""
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"(started {record.get('started', '?')}{extra})")


def read_record(path: Path) -> dict[str, Any] | None:
    """The record in a lock file; None when the file is missing, empty or not a record."""
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _busy(run_dir: Path) -> str:
    """What a training refused for the lock of ``run_dir`` says."""
    lock = run_dir / LOCK_FILE
    return (f"{run_dir} is in use by another training: {describe_holder(read_record(lock))} holds {lock}. "
            "Wait for it to end or stop it, or train into another output_dir (one training per run folder)")


def check_run_dir_free(run_dir: str | os.PathLike) -> None:
    """RunDirBusyError, as a training started now would raise it, when a live process holds the
    lock of ``run_dir`` (a multirun's check of its job folders). The lock is tested with a shared
    lock taken and dropped at once; nothing is created or written."""
    lock = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file (or none readable): nothing to tell; the job's own lock decides
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusyError(_busy(Path(run_dir))) from None
    except OSError as err:
        if err.errno not in UNSUPPORTED:
            raise
    finally:
        os.close(fd)  # drops the shared lock when it was taken


class RunDirLock:
    """The exclusive lock of one run folder (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns the stale record it took over (None when there was none).
        RunDirBusyError naming the folder and the holder when a live process holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = locked_fd(self.path)
        except BlockingIOError:
            raise RunDirBusyError(_busy(self.run_dir)) from None
        except OSError as err:
            if err.errno not in UNSUPPORTED:
                raise
            logger.warning("cannot lock %s (%s): this filesystem does not support flock, so a second "
                           "training into %s would not be refused", self.path, err, self.run_dir)
            return None
        if fd is None:
            raise RunDirBusyError(f"{self.path} keeps being replaced by other processes: cannot lock {self.run_dir}")
        self._fd = fd
        return self._take_over()

    def _take_over(self) -> dict[str, Any] | None:
        """Write our record over what the file held; warn when that was a dead holder's."""
        assert self._fd is not None
        stale = read_record(self.path)
        if stale is not None:
            logger.warning("took over the lock of %s: %s held it and ended without releasing it (killed?); "
                           "its last checkpoint is what resume=true continues from", self.run_dir,
                           describe_holder(stale))
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(_record()).encode(), 0)
        os.fsync(self._fd)
        return stale

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike) -> Iterator[RunDirLock | None]:
    """Lock ``run_dir`` for one training, on rank 0 (all ranks share the folder); every rank
    raises RunDirBusyError when it is held, so that a torchrun/Slurm job fails as a whole."""
    lock = RunDirLock(run_dir) if du.is_main_process() else None
    error: Exception | None = None
    if lock is not None:
        try:
            lock.acquire()
        except Exception as err:  # told to the other ranks first, or they would wait for rank 0
            error = err
    told = du.broadcast_object(None if error is None else (isinstance(error, RunDirBusyError), str(error)))
    if error is not None:
        raise error
    if told is not None:
        busy, message = told
        raise RunDirBusyError(message) if busy else RuntimeError(f"rank 0 cannot lock {run_dir}: {message}")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
