"""Checks on the composed hydra config, so a typo or a bad value fails at start with the key's name.

A typed override of an undeclared key is refused before hydra composes (:mod:`.misspelt`), and hydra
refuses one that a group's node lacks; these checks catch what a user's own
yaml files (experiments, copied configs) add that nothing reads, and values of the wrong type or
range (``solver.max_iter=abc``, ``resume=maybe``, ``export.format=tflite``) before any work starts.
Every key is declared once, with its type, check and doc, in :mod:`panfpn.engine.config.schema`
(train, eval, solver, data, predict, merge, export and the run-wide keys); their defaults live in
configs/config.yaml only, and the jobs read the validated node. docs/config.md is generated from
the declaration (``python -m panfpn.engine.config.doc``).
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from panfpn.engine.config.checks import Check
from panfpn.engine.config.schema import IMAGE_ID_RULES, SECTIONS, known_keys, options_of
from panfpn.utils.errors import ConfigError

__all__ = ["CHECKS", "IMAGE_ID_RULES", "KNOWN_KEYS", "ConfigError", "check_value", "section_values",
           "validate_config"]

# Views of the declaration (config_schema), not lists of their own: the keys of each section, and
# each checked key's rule ("section.key" -> Check). The model group's node is checked by its
# constructors (instantiate raises on unexpected arguments).
KNOWN_KEYS: dict[str, set[str]] = {name: known_keys(name) for name in SECTIONS}
CHECKS: dict[str, Check] = {f"{name}.{key}" if name else key: opt.check
                            for name in SECTIONS for key, opt in options_of(name).items()
                            if opt.check is not None}
# "section.key" of every declared key a section may do without
_OPTIONAL = {f"{name}.{key}" if name else key for name in SECTIONS
             for key, opt in options_of(name).items() if opt.optional}
# Sections a job may do without (a config composed for training alone); when present, every key
# of theirs must be there and valid.
OPTIONAL_SECTIONS = tuple(name for name, cls in SECTIONS.items() if not cls.required)  # type: ignore[attr-defined]


def _unknown(section: str, keys: Iterable[str], known: set[str]) -> None:
    for key in keys:
        if key not in known:
            full = f"{section}.{key}" if section else key
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {sorted(known)}"
            raise ConfigError(f"unknown config key '{full}'{extra}")


def check_value(key: str, value: Any, check: Check) -> None:
    """Raise ConfigError when ``value`` (of config key ``key``) breaks ``check``."""
    if not check.accepts(value):
        raise ConfigError(f"config key '{key}' must be {check.wants}, got {value!r} ({type(value).__name__})")


def _check_values(cfg: DictConfig, sections: Iterable[str]) -> None:
    for key, check in CHECKS.items():
        section, _, leaf = key.rpartition(".")
        if section not in sections:
            continue
        node = OmegaConf.select(cfg, section) if section else cfg
        if node is None and section in OPTIONAL_SECTIONS:
            continue
        if leaf not in node:
            if key in _OPTIONAL:
                continue
            raise ConfigError(f"config key '{key}' is missing (it must be {check.wants})")
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(key, value, check)


def _check_keys(cfg: DictConfig, section: str) -> None:
    """Unknown keys of one section (did-you-mean); a missing required section."""
    node = cfg if section == "" else cfg.get(section)
    if node is None:
        if section not in OPTIONAL_SECTIONS:
            raise ConfigError(f"config section '{section}' is missing")
        return
    known = KNOWN_KEYS.get(section)
    if known is not None:
        _unknown(section, node.keys(), known)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first unknown key or bad value of every section present (the
    predict and export sections too); also resolves interpolations."""
    for section in KNOWN_KEYS:
        _check_keys(cfg, section)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"config keys without a value (???): {sorted(missing)}")
    _check_values(cfg, {key.rpartition(".")[0] for key in CHECKS})


def section_values(cfg: DictConfig, section: str) -> dict[str, Any]:
    """One section's keys as plain values, checked by the same table as :func:`validate_config`
    (unknown keys, types, ranges); for a job reading its own section (``predict``, ``export``).

    Raises:
        ConfigError: naming the key and value; or when the section is absent (a config not
            composed from configs/config.yaml, which holds every default).
    """
    node = OmegaConf.select(cfg, section, default=None)
    if node is None:
        raise ConfigError(f"config section '{section}' is missing (configs/config.yaml has it)")
    _check_keys(cfg, section)
    _check_values(cfg, {section})
    return OmegaConf.to_container(node, resolve=True)
