"""Process-group setup and small collectives; one code path for 1 process or many (torchrun)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> torch.device:
    """Join the process group torchrun describes in the environment; returns this rank's device.

    Without torchrun's variables (WORLD_SIZE unset or 1) nothing is initialised. Backend: NCCL on
    GPU, gloo on CPU.
    """
    from panfpn.engine.slurm_env import apply_slurm_env

    apply_slurm_env()  # srun without torchrun: map SLURM_* to torchrun's variables
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("config key 'device' asks for cuda, but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dev


def shared_run_dir(run_dir: str | os.PathLike) -> str:
    """Rank 0's run dir on every rank: hydra stamps each process's dir with its own start time,
    so ranks started a second apart would otherwise write (and resume) in different folders."""
    return str(broadcast_object(str(run_dir)))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity with one process)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
