"""Distributed and device helpers with one code path for 1 process or many (torchrun).

Bottom layer: data/, evaluation/ and engine/ use these instead of their own
``torch.distributed.is_available() and is_initialized()`` checks; the process-group setup itself
is :mod:`panfpn.engine.distributed`. Outside a process group every helper is the identity
(rank 0 of 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from panfpn.utils.errors import ConfigError

from panfpn.utils.device_names import DEVICE_NAMES, is_device_name  # noqa: F401 (re-exported)


def is_distributed() -> bool:
    """True inside an initialised process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank; 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes; 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (the one process that writes shared files)."""
    return get_rank() == 0


def is_multiprocess() -> bool:
    """True when there are other ranks to talk to (a group of size > 1)."""
    return get_world_size() > 1


def barrier() -> None:
    """Wait for every rank; nothing outside a process group."""
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """The device tensors must be on for the group's backend (NCCL: this rank's GPU, else CPU)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks as a new tensor on ``tensor``'s device (a copy with 1 process)."""
    if not is_multiprocess():
        return tensor.clone()
    t = tensor.to(collective_device()).clone()
    dist.all_reduce(t)
    return t.to(tensor.device)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over ranks as a new tensor on ``tensor``'s device, so every rank
    takes the same decision (a copy with 1 process)."""
    if not is_multiprocess():
        return tensor.clone()
    t = tensor.to(collective_device()).clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.to(tensor.device)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity with one process)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` with one process)."""
    if not is_multiprocess():
        return [obj]
    parts: list[Any] = [None] * get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_device(name: Any, local_rank: int = 0) -> torch.device:
    """The torch device for config key ``device``: ``auto`` (CUDA when there is one, else CPU),
    ``cpu``, ``cuda`` (GPU ``local_rank``, torchrun's LOCAL_RANK) or ``cuda:<index>``.

    Raises:
        ConfigError: naming the key and the value, for an unknown name or a GPU that is not there.
    """
    if not is_device_name(name):
        raise ConfigError(f"config key 'device' must be {DEVICE_NAMES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r}, but no CUDA device is available "
                          "(use device=cpu or device=auto)")
    index = int(name.partition(":")[2] or local_rank)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"config key 'device' is {name!r}: GPU {index} is asked for (LOCAL_RANK="
                          f"{local_rank}) but only {torch.cuda.device_count()} are visible")
    return torch.device("cuda", index)
