"""The error of another rank, told by rank 0: what job_status.json and log.txt (training) and
tools/eval.py's one stderr line show when a rank fails or is stopped alone.

When one rank fails (a bad image in its shard, a loss error), the others only see their next
collective fail (gloo: ``Connection closed by peer``; NCCL: a timeout) and torchrun stops them. Rank 0
writes the run folder, so ``job_status.json`` and ``log.txt`` named that consequence and never the
cause, which was only on the failed rank's stderr. Here a failing rank leaves its error in
``rank<r>_error.json`` before it exits (its connections are still open then, so no other rank can
fail before the file is there), and each other rank, failing in turn in a collective (or stopped
by the SIGTERM torchrun sends the ranks left, which may come first), raises
:class:`OtherRankFailedError` naming it, and leaves no file of its own (it is no cause). An error
of a rank's own keeps its type. Rank 0 alone says the line; every rank so ended exits as the
failed one did: 2 when its error was a known input error (``"input_error"`` in the file:
:mod:`panfpn.engine.tool_errors`, a bad image in its shard), 128 + signal when a signal stopped
it, else 1. torchrun itself exits 1 whatever its ranks' statuses; its report names the first
rank that failed and that rank's exit code.

A rank killed outright (SIGKILL, the out-of-memory killer) leaves nothing: rank 0, whose collective
then fails, says ``another rank ended without leaving its error ...`` (when torchrun's SIGTERM
reaches rank 0 first, rank 0 cannot tell it from a stop of its own and says ``stopped by SIGTERM``).

A rank stopped by a signal sent to it alone (``kill -TERM <pid>``, the OOM handling of a
cluster) leaves ``stopped by SIGTERM`` the same way: rank 0 then says ``rank 1 was stopped by
SIGTERM``. A Ctrl-C reaches every rank (torchrun passes it on): no rank leaves SIGINT, and rank 0 stopped by it reports
its own stop. (A SIGTERM to every rank, as scancel sends, may be told as rank 1's when its file is
there before rank 0 looks.)
"""

from __future__ import annotations

import logging
import signal
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from panfpn.utils import dist as du
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.json_file import JSONFileError, load_json
from panfpn.engine.tool_errors import error_message, reported_input_error
from panfpn.utils.stop_signals import EndedElsewhere, defer_stop_signals, signal_name

logger = logging.getLogger("panfpn")
ERROR_FILE = "rank{rank}_error.json"
# rank 0's collective failed and no rank left its error: one was killed outright
GONE = ("ended without leaving its error (killed outright: SIGKILL, the out-of-memory killer?); "
        "torchrun's report gives each rank's exit status")
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class OtherRankFailedError(EndedElsewhere, RuntimeError):
    """This rank failed after another rank had failed or was stopped: the message starts with that
    rank's error; ``summary`` is that part alone, ``signum`` the signal that stopped it (None: an
    error), ``input_error`` whether that error was a known input error (every rank then exits 2).
    ``others``: (rank, error, signal[, input error]) of each such rank."""

    def __init__(self, others: list[tuple], err: BaseException) -> None:
        self.summary = "; ".join(f"another rank {text}" if rank is None else
                                 f"rank {rank} " + (f"was {text}" if signum else f"failed: {text}")
                                 for rank, text, signum, *_ in others)
        self.signum = others[0][2]
        self.input_error = bool(others[0][3:] and others[0][3])
        super().__init__(f"{self.summary} (then rank {du.get_rank()}: {type(err).__name__}: {err})")


def error_file(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` leaves its error in the run folder."""
    return run_dir / ERROR_FILE.format(rank=rank)


@contextmanager
def told_to_rank_0(run_dir: Path) -> Iterator[None]:
    """Around a multi-process job (training, tools/eval.py): a rank that fails or is stopped on its
    own leaves its exception (or the signal) in the run folder; a rank failing in a collective or
    stopped by torchrun raises :class:`OtherRankFailedError` when other ranks left theirs meanwhile
    (its own error otherwise). Rank 0 tells it (module docstring); every rank so ended exits as the
    first of them did (:meth:`~panfpn.utils.stop_signals.EndedElsewhere.exit_status`)."""
    started = time.time()
    try:
        yield
    except BaseException as err:
        if not du.is_multiprocess():
            raise
        defer_stop_signals()  # torchrun's SIGTERMs must not replace the error told below
        # torchrun's SIGTERM to the ranks left, once one failed, may come before this rank's
        # collective fails; a Ctrl-C (SIGINT, every rank) is each rank's own stop
        consequence = _collective_failure(err) or (
            isinstance(err, KeyboardInterrupt) and getattr(err, "signum", signal.SIGINT) != signal.SIGINT)
        others = _errors_since(run_dir, started) if consequence else []
        if not others and du.is_main_process() and _peer_gone(err):  # killed outright (SIGKILL, OOM): no file
            others = [(None, GONE, None)]
        if not others:  # this rank's own error (all ranks raise NonFiniteLossError together): as it is
            if isinstance(err, (Exception, KeyboardInterrupt)):  # failed, or stopped by a signal
                _leave_error(run_dir, du.get_rank(), err)
            raise
        told = OtherRankFailedError(others, err)
        if du.is_main_process():  # this rank's consequence (a closed connection) is in the error
            logger.error("%s", told.summary)
        raise told from err


def _collective_failure(err: Exception) -> bool:
    """Whether ``err`` is how a collective fails when a peer is gone (gloo: a plain RuntimeError
    'Connection closed by peer'; torch's DistError family), rather than an error of rank 0's own."""
    return type(err) is RuntimeError or isinstance(err, dist.DistError)


def _peer_gone(err: BaseException) -> bool:
    """Whether ``err`` says a peer's connection ended (gloo: 'Connection closed by peer'; torch's
    DistError family), not merely that rank 0 raised a plain RuntimeError of its own (a torch op's)."""
    return isinstance(err, dist.DistError) or (
        type(err) is RuntimeError and any(text in str(err) for text in _PEER_GONE))


def _leave_error(run_dir: Path, rank: int, err: BaseException) -> None:
    """This rank's error, or the signal that stopped it (a KeyboardInterrupt with ``signum``: the
    tools' and the training job's; a plain one is SIGINT); nothing for SIGINT, which reaches every
    rank (a Ctrl-C): rank 0 tells its own stop."""
    signum = getattr(err, "signum", signal.SIGINT) if isinstance(err, KeyboardInterrupt) else None
    if signum == signal.SIGINT:
        return
    known = reported_input_error(err)  # this rank exits 2 on it with its line: so will the others
    told, message = known or err, error_message(known or err)
    if not message.split(":")[0].endswith(type(told).__name__):  # a DataLoader worker's line has its type
        message = f"{type(told).__name__}: {message}"
    text = f"stopped by {signal_name(signum)}" if signum else message
    try:
        write_json_atomic(error_file(run_dir, rank), {
            "rank": rank, "time": time.time(), "error": text, "signal": signum, "input_error": known is not None,
            "traceback": traceback.format_exc(limit=8)[-4000:]})
    except OSError as io_err:  # the original error matters more than this note
        logger.warning("rank %d could not write %s: %s", rank, error_file(run_dir, rank), io_err)


def _errors_since(run_dir: Path, started: float) -> list[tuple[int, str, int | None, bool]]:
    """(rank, error, signal, input error) of the other ranks' files written by this job (older ones
    are a previous run's)."""
    found = []
    for rank in range(du.get_world_size()):
        path = error_file(run_dir, rank)
        if rank == du.get_rank():
            continue
        try:
            record = load_json(path) if path.is_file() else None
        except JSONFileError:
            continue
        if isinstance(record, dict) and float(record.get("time", 0.0)) >= started - 1.0:
            signum = record.get("signal")
            found.append((rank, str(record.get("error")), int(signum) if signum else None,
                          bool(record.get("input_error"))))
    return found
