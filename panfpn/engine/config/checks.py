"""The value checks of the config schema (:mod:`panfpn.engine.config.schema`): each says what it
wants, for the error message ("config key 'solver.max_iter' must be an integer >= 1, got 2.5
(float)"), and whether a value passes. Stricter than OmegaConf's node types on purpose: a bool is
not an integer, ``1`` or ``'yes'`` is not a boolean, ranges and choices are part of the type."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Check:
    """One rule for a config value: ``accepts(value)`` and what it wants, for the error message."""

    wants: str
    accepts: Callable[[Any], bool]
    optional: bool = False  # the key may be absent (then nothing is checked)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(minimum: int | None = None, *, maximum: int | None = None, multiple_of: int | None = None,
            nullable: bool = False) -> Check:
    """An int (not a bool, not a float like 2.5) in [``minimum``, ``maximum``], a multiple of
    ``multiple_of``; None too when ``nullable``."""
    wants = "an integer" + (f" >= {minimum}" if minimum is not None else "") \
        + (f" and <= {maximum}" if maximum is not None else "") \
        + (f", a multiple of {multiple_of}" if multiple_of is not None else "")

    def accepts(v: Any) -> bool:
        if nullable and v is None:
            return True
        return _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum) \
            and (multiple_of is None or v % multiple_of == 0)

    return Check(("null or " if nullable else "") + wants, accepts)


def number(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None,
           nullable: bool = False) -> Check:
    """A finite int or float (not a bool) within the given bounds; None too when ``nullable``."""
    bounds = [f"{op} {b}" for op, b in ((">", above), (">=", at_least), ("<=", at_most)) if b is not None]
    wants = " and ".join(["a finite number " + bounds[0], *bounds[1:]]) if bounds else "a finite number"

    def accepts(v: Any) -> bool:
        if nullable and v is None:
            return True
        return _is_number(v) and (above is None or v > above) and (at_least is None or v >= at_least) \
            and (at_most is None or v <= at_most)

    return Check(("null or " if nullable else "") + wants, accepts)


def boolean(*, optional: bool = False) -> Check:
    """A real boolean: hydra parses true/false; 'maybe', 1 or 'yes' are errors."""
    return Check("a boolean (true/false)", lambda v: isinstance(v, bool), optional)


def boolean_or_auto() -> Check:
    """true, false or 'auto' (decided when the job runs: e.g. a progress bar only on a terminal)."""
    return Check("a boolean (true/false) or 'auto'", lambda v: isinstance(v, bool) or v == "auto")


def one_of(*choices: str) -> Check:
    """One of the given strings."""
    return Check(f"one of {sorted(choices)}", lambda v: isinstance(v, str) and v in choices)


def string(*, nullable: bool = False) -> Check:
    """A non-empty string (a path, a name); None too when ``nullable``."""
    return Check(("null or " if nullable else "") + "a non-empty string",
                 lambda v: (nullable and v is None) or (isinstance(v, str) and v != ""))


def paths(*, nullable: bool = False) -> Check:
    """A path or glob, or a non-empty list of them; None too when ``nullable``."""
    def accepts(v: Any) -> bool:
        if isinstance(v, list):
            return bool(v) and all(isinstance(x, str) and x for x in v)
        return (nullable and v is None) or (isinstance(v, str) and v != "")
    return Check(("null or " if nullable else "") + "a path or glob, or a non-empty list of them", accepts)


def rule_or_regex(*names: str) -> Check:
    """One of the named rules, or a regular expression with at least one group (the value it takes)."""
    def accepts(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        if v in names:
            return True
        try:
            return re.compile(v).groups >= 1
        except re.error:
            return False
    return Check(f"one of {list(names)} or a regular expression with a group (the id), e.g. "
                 "'(.+)_leftImg8bit'", accepts)


def preset_or(check: Check, *, none: bool = False) -> Check:
    """``"preset"`` (keep the preset's value) or what ``check`` accepts; with ``none``, also null
    or the string ``"none"`` (a rule switched off)."""
    wants = "'preset', " + ("null or 'none', " if none else "") + check.wants
    return Check(wants, lambda v: v == "preset" or (none and (v is None or v == "none"))
                 or check.accepts(v))
