"""What the launcher (torchrun, srun) tells a process in its environment, read without torch: the
tools' signal handling (:mod:`panfpn.utils.stop_signals`) runs before torch is imported."""

from __future__ import annotations

import os


def launch_rank() -> int:
    """This process's rank as its launcher set it, before the process group exists: torchrun's
    RANK, else srun's SLURM_PROCID, else 0."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def launched_as_several() -> bool:
    """Whether the launcher started several processes (torchrun's ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
