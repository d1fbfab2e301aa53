"""A stop signal that one rank alone received during a training's evaluation, seen by the other
ranks at their next evaluation batch.

In the training loop the ranks share a signal at every step (a collective). The evaluation has none
until its gather: the ranks' shards differ in length, so a collective per batch would not pair up.
A rank that received SIGTERM alone stopped evaluating and waited in the gather while the others
went through their whole shard (minutes on a real validation set, up to gloo's 30-minute timeout).
Here the rank leaves a note ``.stop_signal_rank<r>`` in the run folder, and every rank's evaluation
stops at its next batch when another rank's note is there; the loop then checkpoints as on any
signal. Rank 0 removes the notes before each evaluation's first collective (a note left by an
earlier run or evaluation is gone before a rank can look) and when the loop ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

from panfpn.utils import dist as du

logger = logging.getLogger("panfpn")
NOTE = ".stop_signal_rank{rank}"


class StopNotes:
    """The notes of one training's ranks in ``run_dir`` (nothing is written by one process)."""

    def __init__(self, run_dir: Path) -> None:
        self.rank, world = du.get_rank(), du.get_world_size()
        self.paths = [Path(run_dir) / NOTE.format(rank=r) for r in range(world)] if world > 1 else []

    def leave(self, signum: int) -> None:
        """This rank received ``signum`` (called from its signal handler)."""
        if not self.paths:
            return
        try:
            self.paths[self.rank].write_text(f"{signum}\n")
        except OSError as err:  # the other ranks learn of it at the gather instead
            logger.warning("could not write %s: %s", self.paths[self.rank], err)

    def seen(self) -> bool:
        """Whether another rank left a note."""
        return any(path.exists() for r, path in enumerate(self.paths) if r != self.rank)

    def clear(self) -> None:
        """Rank 0 removes every note; call it before a collective that every rank passes."""
        if du.is_main_process():
            for path in self.paths:
                path.unlink(missing_ok=True)
