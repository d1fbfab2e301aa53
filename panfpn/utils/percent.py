"""Scores kept as fractions, shown in percent: one rule for what is "not defined" (None, NaN, or the
JSON ``null`` a NaN becomes), for the printed results, the TensorBoard scalars and the report."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


def percent(value: Any) -> float | None:
    """A fraction in percent; None where it is no finite number (a score with nothing to average)."""
    if not isinstance(value, Real) or not math.isfinite(value):
        return None
    return 100.0 * value


def percent_text(value: Any) -> str:
    """A fraction as percent text with 2 decimals; ``n/a`` where :func:`percent` is None."""
    shown = percent(value)
    return "n/a" if shown is None else f"{shown:.2f}"


__all__ = ["percent", "percent_text"]
