"""Slurm -> torchrun environment bridge, so that ``srun`` (or hydra's submitit launcher, which
runs ``srun``) can start one process per GPU without torchrun.

:func:`panfpn.engine.distributed.init_distributed` reads torchrun's variables (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``; ``torch.distributed``'s ``env://`` init also needs ``MASTER_ADDR`` and
``MASTER_PORT``). Under ``srun`` each task has instead:

=========================  ====================================  ===================
Slurm (set by srun)        meaning                               torchrun name
=========================  ====================================  ===================
``SLURM_PROCID``           global rank of the task               ``RANK``
``SLURM_LOCALID``          rank of the task on its node          ``LOCAL_RANK``
``SLURM_STEP_NUM_TASKS``   tasks in the step (all nodes)         ``WORLD_SIZE``
``SLURM_NODEID``           index of the node in the step         ``GROUP_RANK``
``SLURM_STEP_NODELIST``    nodes of the step (compressed)        first = ``MASTER_ADDR``
``SLURM_STEP_TASKS_PER_NODE``  e.g. ``8(x2)``                    ``LOCAL_WORLD_SIZE``
``SLURM_JOB_ID``           same on every task                    ``MASTER_PORT`` derived from it
=========================  ====================================  ===================

Only step variables are used: an ``sbatch`` script itself (not under ``srun``) has
``SLURM_NTASKS`` but is a single process, and must not wait for peers that never start.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, MutableMapping

# A port range above the usual ephemeral/service ports, spread by job id so that two jobs sharing
# a node rarely collide; MASTER_PORT set by the user wins.
_PORT_BASE, _PORT_SPAN = 20000, 40000


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a Slurm node list: ``"gpu[01-03,7],cpu5"`` -> ``["gpu01", "gpu02", "gpu03",
    "gpu7", "cpu5"]`` (zero padding of ranges kept, as ``scontrol show hostnames`` does)."""
    return [host for token in _split_top_level(nodelist) for host in _expand_token(token)]


def _expand_token(token: str) -> list[str]:
    """One node-list entry, possibly with several bracket groups (``r[1-2]n[01-02]``)."""
    match = re.match(r"([^\[]*)\[([^\]]+)\](.*)", token)
    if not match:
        return [token]
    prefix, ranges, rest = match.groups()
    values: list[str] = []
    for part in ranges.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            values += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
        else:
            values.append(part)
    tails = _expand_token(rest)
    return [f"{prefix}{v}{t}" for v in values for t in tails]


def _split_top_level(nodelist: str) -> list[str]:
    """Split at commas outside brackets."""
    tokens, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            tokens.append(nodelist[start:i])
            start = i + 1
    tokens.append(nodelist[start:])
    return [t.strip() for t in tokens if t.strip()]


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node ``node_id`` from Slurm's ``"2(x3),1"`` notation (3 nodes with 2, then 1)."""
    counts: list[int] = []
    for token in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", token)
        if not match:
            raise ValueError(f"cannot parse Slurm tasks-per-node {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise ValueError(f"node id {node_id} outside Slurm tasks-per-node {tasks_per_node!r}")
    return counts[node_id]


def torchrun_env_from_slurm(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """torchrun's variables derived from an ``srun`` task's environment; ``{}`` outside an srun step.

    Returns ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` and, when
    Slurm gives them, ``GROUP_RANK`` and ``LOCAL_WORLD_SIZE``.

    Raises:
        ValueError: an srun step without the variables a rank needs (names the variable).
    """
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env or "SLURM_STEP_NUM_TASKS" not in env:
        return {}
    for key in ("SLURM_LOCALID", "SLURM_JOB_ID"):
        if key not in env:
            raise ValueError(f"Slurm step without {key}: cannot derive torchrun's variables")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ValueError("Slurm step without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST: no master address")
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "MASTER_ADDR": expand_nodelist(nodelist)[0],
        "MASTER_PORT": env.get("MASTER_PORT") or str(_PORT_BASE + int(env["SLURM_JOB_ID"]) % _PORT_SPAN),
    }
    if "SLURM_NODEID" in env:
        out["GROUP_RANK"] = env["SLURM_NODEID"]
        if env.get("SLURM_STEP_TASKS_PER_NODE"):
            out["LOCAL_WORLD_SIZE"] = str(tasks_on_node(env["SLURM_STEP_TASKS_PER_NODE"],
                                                        int(env["SLURM_NODEID"])))
    return out


def apply_slurm_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Export :func:`torchrun_env_from_slurm`'s variables unless torchrun already set ``RANK``
    (``srun torchrun ...`` keeps torchrun's values). Returns what was set.

    Call it before reading ``WORLD_SIZE`` (first thing in ``init_distributed``).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return {}
    derived = torchrun_env_from_slurm(env)
    for key, value in derived.items():
        env.setdefault(key, value)
    return derived
