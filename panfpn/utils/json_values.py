"""Values for strict JSON: every JSON file panfpn writes is parsed by strict readers (browsers,
``jq``, other languages), which reject the ``NaN`` / ``Infinity`` literals Python's ``json`` writes
by default. :func:`panfpn.utils.atomic.write_json_atomic` refuses non-finite numbers; data that
may hold them on purpose (a metric undefined for a class) goes through :func:`nonfinite_to_null`.
"""

from __future__ import annotations

import math
from typing import Any


def nonfinite_to_null(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, numbers) with every NaN / +-inf float replaced by None
    (JSON ``null``: "not defined"), containers copied."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nonfinite_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nonfinite_to_null(v) for v in value]
    return value
