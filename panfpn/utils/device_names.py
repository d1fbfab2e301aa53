"""The values config key ``device`` takes, without torch: config checks import them (tools that never
touch torch, like tools/merge.py on the CPU, compose and check their config without its start-up)."""

from __future__ import annotations

import re
from typing import Any

# The values config key 'device' takes (configs/config.yaml).
DEVICE_NAMES = "'auto', 'cpu', 'cuda' or 'cuda:<index>'"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def is_device_name(name: Any) -> bool:
    """Whether ``name`` is one of the values config key ``device`` takes (not whether it is there)."""
    return isinstance(name, str) and _DEVICE.fullmatch(name) is not None
