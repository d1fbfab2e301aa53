"""The error of another rank, told by rank 0: what job_status.json and log.txt show when a rank fails.

When one rank fails (a bad image in its shard, a loss error), the others only see their next
collective fail (gloo: ``Connection closed by peer``; NCCL: a timeout) and torchrun stops them. Rank 0
writes the run folder, so ``job_status.json`` and ``log.txt`` named that consequence and never the
cause, which was only on the failed rank's stderr. Here a failing rank > 0 leaves its error in
``rank<r>_error.json`` before it exits (its connections are still open then, so rank 0 cannot fail
before the file is there), and rank 0, failing in turn in a collective (or stopped by the SIGTERM
torchrun sends the ranks left, which may come first), raises :class:`OtherRankFailedError` naming
it. An error of rank 0's own keeps its type.
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from panfpn.engine.training.job_signals import defer_stop_signals
from panfpn.utils import dist as du
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.json_file import JSONFileError, load_json

logger = logging.getLogger("panfpn")
ERROR_FILE = "rank{rank}_error.json"


class OtherRankFailedError(RuntimeError):
    """Rank 0 failed after another rank had failed: the message starts with that rank's error."""


def error_file(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` leaves its error in the run folder."""
    return run_dir / ERROR_FILE.format(rank=rank)


@contextmanager
def told_to_rank_0(run_dir: Path) -> Iterator[None]:
    """Around a multi-process training: a rank > 0 leaves its exception in the run folder; rank 0,
    failing in a collective, raises :class:`OtherRankFailedError` when other ranks left theirs
    meanwhile (its own error otherwise)."""
    started = time.time()
    try:
        yield
    except BaseException as err:
        if not du.is_multiprocess():
            raise
        defer_stop_signals()  # torchrun's SIGTERMs must not replace the error told below
        if not du.is_main_process():
            if isinstance(err, Exception):  # not a stop signal: this rank failed
                _leave_error(run_dir, du.get_rank(), err)
            raise
        # torchrun's SIGTERM to the ranks left, once one failed, may come before rank 0's collective fails
        consequence = _collective_failure(err) or isinstance(err, KeyboardInterrupt)
        others = _errors_since(run_dir, started) if consequence else []
        if not others:  # rank 0's own error (all ranks raise NonFiniteLossError together): as it is
            raise
        message = "; ".join(f"rank {rank} failed: {text}" for rank, text in others)
        logger.error("%s (then rank 0: %s: %s)", message, type(err).__name__, err)
        raise OtherRankFailedError(f"{message} (then rank 0: {type(err).__name__}: {err})") from err


def _collective_failure(err: Exception) -> bool:
    """Whether ``err`` is how a collective fails when a peer is gone (gloo: a plain RuntimeError
    'Connection closed by peer'; torch's DistError family), rather than an error of rank 0's own."""
    return type(err) is RuntimeError or isinstance(err, dist.DistError)


def _leave_error(run_dir: Path, rank: int, err: Exception) -> None:
    try:
        write_json_atomic(error_file(run_dir, rank), {
            "rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=8)[-4000:]})
    except OSError as io_err:  # the original error matters more than this note
        logger.warning("rank %d could not write %s: %s", rank, error_file(run_dir, rank), io_err)


def _errors_since(run_dir: Path, started: float) -> list[tuple[int, str]]:
    """(rank, error) of the other ranks' files written by this job (older ones are a previous run's)."""
    found = []
    for rank in range(1, du.get_world_size()):
        path = error_file(run_dir, rank)
        try:
            record = load_json(path) if path.is_file() else None
        except JSONFileError:
            continue
        if isinstance(record, dict) and float(record.get("time", 0.0)) >= started - 1.0:
            found.append((rank, str(record.get("error"))))
    return found
