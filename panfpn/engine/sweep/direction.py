"""The sweeper's direction against ``train.objective_direction``: optuna's sweeper minimises by
default, so ``-m hydra/sweeper=optuna train.objective=pq/All`` without
``hydra.sweeper.direction=maximize`` searched for the worst PQ, and its best trial was the sweep
summary's worst, without a word. A ConfigError at the job's start instead."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from panfpn.utils.errors import ConfigError


def _names(direction: object) -> list[str]:
    """``minimize`` / ``maximize`` of a sweeper's direction (a string, an enum, or a list of them)."""
    values = list(direction) if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)) \
        else [direction]
    return [str(getattr(v, "name", v)).lower().rpartition(".")[2] for v in values]


def check_sweeper_direction(cfg: DictConfig) -> None:
    """ConfigError when hydra's sweeper (one with a ``direction``, e.g. optuna's) optimises the
    returned ``train.objective`` the other way than ``train.objective_direction`` says."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or cfg.train.get("objective") is None:
        return
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    if direction is None:
        return
    wanted, given = str(cfg.train.objective_direction), _names(direction)
    if given != [wanted]:
        raise ConfigError(f"hydra.sweeper.direction is {given if len(given) > 1 else given[0]} but "
                          f"train.objective_direction={wanted} (train.objective={cfg.train.objective}): the sweeper "
                          f"would optimise the other way; set hydra.sweeper.direction={wanted} (docs/experiments.md)")
