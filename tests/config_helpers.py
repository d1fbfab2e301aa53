"""The one hydra compose helper of the tests: the project's root config with overrides, as the tools
compose it. Importable from any test file (``from config_helpers import compose_config``): pytest puts
this folder on ``sys.path`` when it loads ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import panfpn.data.resolvers  # noqa: F401 - the panfpn.* resolvers (class counts, workers), as the tools register them

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def compose_config(overrides: Sequence[str] = (), *, output_dir: str | PathLike | None = None,
                   return_hydra_config: bool = False) -> DictConfig:
    """``configs/config.yaml`` composed with ``overrides`` (and ``output_dir=`` when given, which
    the tools set from hydra's run dir)."""
    GlobalHydra.instance().clear()
    extra = [f"output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra], return_hydra_config=return_hydra_config)
