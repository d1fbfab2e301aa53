"""A misspelt engine key on a tool's command line (``solver.max_itr=3``), told before hydra composes.

Hydra refuses overriding a key the composed config lacks with its own block (``Could not override
'solver.max_itr'. ... Key 'max_itr' is not in struct``) and exit status 1, before the tool runs; only
a ``+key=`` reached :func:`panfpn.engine.config.validate_config` and its did-you-mean. The keys of the
engine's sections (the run-wide keys, ``train``, ``eval``, ``solver``, ``data``, ``predict``,
``merge``, ``export``) are declared in :mod:`panfpn.engine.config.schema`, so a plain override of an
undeclared one is known to be a typo without composing anything: the tools refuse it as they refuse
any config error (``tools/<x>.py: unknown config key 'solver.max_itr'; did you mean 'max_iter'?``,
exit 2). Keys inside a group's nodes (``model.*``, ``solver.schedule.*``, ``data.train.*``) and
declared keys a composed config lacks are left to hydra.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from panfpn.engine.config import KNOWN_KEYS, _unknown
from panfpn.engine.config.typed_overrides import parsed_override
from panfpn.utils.errors import ConfigError


def _override_key(arg: str) -> str | None:
    """The key a plain ``key=value`` command-line override sets; None for flags, ``+`` / ``++`` / ``~``
    overrides, packages (``key@pkg``), hydra's own keys and what hydra cannot parse (it says so)."""
    override = None if arg.startswith(("+", "~")) else parsed_override(arg)
    if override is None:
        return None
    key = override.key_or_group
    if override.package is not None or key.startswith("hydra") or "/" in key:
        return None
    return key


def check_typed_keys(args: Sequence[str]) -> None:
    """ConfigError (with a did-you-mean) for the first plain override in ``args`` whose engine
    section, or whose key in that section, :mod:`panfpn.engine.config.schema` does not declare."""
    for arg in args:
        key = _override_key(arg)
        if key is None:
            continue
        section, _, rest = key.partition(".")
        _unknown("", [section], KNOWN_KEYS[""])
        if rest and section in KNOWN_KEYS:
            _unknown(section, [rest.split(".")[0]], KNOWN_KEYS[section])


def refuse_misspelt_keys(tool: str, args: Sequence[str]) -> None:
    """tools/``tool``.py's start: a misspelt engine key (:func:`check_typed_keys`) prints
    ``tools/<tool>.py: <message>`` on stderr (rank 0 of torchrun only) and exits 2, as the tool's
    other config errors do; with ``HYDRA_FULL_ERROR=1`` hydra reports it, with its traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        check_typed_keys(args)
    except ConfigError as err:
        from panfpn.engine.tool_errors import EXIT_INPUT_ERROR, error_line
        from panfpn.utils.launch_env import launch_rank

        if launch_rank() == 0:
            print(error_line(tool, err), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT_ERROR) from None
