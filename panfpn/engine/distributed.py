"""Process-group setup (torchrun, Slurm) and the run dir shared by all ranks.

The rank/world-size checks, collectives and device resolution live in :mod:`panfpn.utils.dist`
(re-exported here, so ``du.get_rank()`` etc. keep working in the engine).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from panfpn.utils.dist import (all_gather_objects, all_reduce_max, all_reduce_mean,  # noqa: F401
                               all_reduce_sum, barrier, broadcast_object, get_rank, get_world_size, is_distributed,
                               is_main_process, resolve_device)
from panfpn.utils.errors import ConfigError
from panfpn.utils.launch_env import launch_rank  # noqa: F401 - du.launch_rank: the jobs read it here

logger = logging.getLogger("panfpn")


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> torch.device:
    """Join the process group torchrun describes in the environment; returns this rank's device.

    Without torchrun's variables (WORLD_SIZE unset or 1) nothing is initialised. Backend: NCCL on
    GPU, gloo on CPU. The device is :func:`~panfpn.utils.dist.resolve_device` of config key
    ``device`` (``cuda``: GPU LOCAL_RANK); a bad value raises its ConfigError.
    """
    from panfpn.engine.slurm_env import apply_slurm_env

    apply_slurm_env()  # srun without torchrun: map SLURM_* to torchrun's variables
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and isinstance(device, str) and device.startswith("cuda:"):
        raise ConfigError(f"config key 'device' is {device!r}, one GPU for all {world} processes: use "
                          "device=cuda (each process takes its LOCAL_RANK GPU) or device=auto")
    dev = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dev


def shared_run_dir(run_dir: str | os.PathLike) -> str:
    """Rank 0's run dir on every rank: hydra stamps each process's dir with its own start time,
    so ranks started a second apart would otherwise write (and resume) in different folders.
    Such a rank's own folder, holding only what hydra wrote at start, is removed."""
    shared = str(broadcast_object(str(run_dir)))
    own = Path(run_dir)
    if shared != str(run_dir) and Path(shared).is_dir() and own.is_dir() and not os.path.samefile(shared, own):
        remove_hydra_only_folder(own)  # not rank 0's folder under another name (a mount, a link)
    return shared


# What hydra writes into a run dir when a job starts: its config copies and the empty job log.
HYDRA_START_FILES = frozenset({".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"})


def remove_hydra_only_folder(folder: Path) -> bool:
    """Remove ``folder`` when it holds nothing but hydra's start files (``.hydra/*.yaml`` and empty
    ``*.log`` files); anything else there keeps it. Returns True when it was removed."""
    if not folder.is_dir():
        return False
    entries = list(folder.rglob("*"))
    files = [p for p in entries if not p.is_dir()]
    for path in files:
        name = path.relative_to(folder).as_posix()
        empty_log = "/" not in name and name.endswith(".log") and path.stat().st_size == 0
        if name not in HYDRA_START_FILES and not empty_log:
            return False
    if any(p.is_dir() and p.relative_to(folder).as_posix() != ".hydra" for p in entries):
        return False
    try:
        for path in files:
            path.unlink()
        if (folder / ".hydra").is_dir():
            (folder / ".hydra").rmdir()
        folder.rmdir()
    except OSError as err:  # something appeared meanwhile: it stays
        logger.warning("kept %s, this rank's hydra folder: %s", folder, err)
        return False
    logger.info("removed %s: this rank's hydra folder, unused (rank 0's run dir is shared)", folder)
    return True


def job_log_on_rank_0_only() -> None:
    """On ranks > 0, stop writing hydra's job log (``<run dir>/<job name>.log``, a file handler of
    the root logger): with a shared run dir every rank's hydra appends to the same file, so each
    line logged before the run's own logging (the start checks' warnings) was written once per
    rank. Those ranks keep their console."""
    if launch_rank() == 0:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
