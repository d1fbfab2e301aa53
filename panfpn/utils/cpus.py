"""How many CPUs this process may really use: its affinity mask and, in a container, its cgroup
CPU quota (which os.cpu_count() and torch's default thread count do not see)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cgroup_cpu_limit(cpu_max: Path | None = None) -> int | None:
    """CPUs allowed by the cgroup v2 quota (rounded up), None when there is no quota or no file."""
    try:
        quota, period = (cpu_max or CGROUP_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus(cpu_max: Path | None = None) -> int:
    """CPUs this process may run on: the affinity mask (or the CPU count), capped by the cgroup quota."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_max)
    return max(1, min(cpus, limit) if limit is not None else cpus)


def cpus_per_local_process() -> int:
    """This process's share of :func:`available_cpus` when torchrun starts ``LOCAL_WORLD_SIZE``
    processes on the node (all of them without torchrun), at least 1."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, available_cpus() // local)
