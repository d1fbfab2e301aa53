"""The error type for a bad config value, in the bottom layer so data/, evaluation/ and utils/ can
raise it too (``panfpn.engine.config.ConfigError`` is this class)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value outside its type, range or choices."""


def refuse_several_processes(tool: str) -> None:
    """ConfigError when torchrun started ``tool`` as several processes (``WORLD_SIZE`` > 1): it runs
    as one process with its own workers, and each process would do the whole job and write the
    same files."""
    import os

    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world.isdigit() and int(world) > 1:
        raise ConfigError(f"tools/{tool}.py runs as one process (its workers do the parallel work): launch it "
                          f"with python, not torchrun (WORLD_SIZE={world})")
