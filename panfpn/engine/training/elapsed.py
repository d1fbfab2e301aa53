"""A run's training time over all its attempts (``time/elapsed_s``): each checkpoint records it
(:data:`ELAPSED_KEY`) and a resumed run continues from the checkpoint's value instead of 0."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Mapping

logger = logging.getLogger("panfpn")
ELAPSED_KEY = "elapsed_s"  # a training checkpoint's key: seconds of training up to it, every attempt's


def recorded_elapsed(ckpt: Mapping[str, Any], path: str | os.PathLike) -> float:
    """The training time checkpoint ``ckpt`` (loaded from ``path``) records; 0 and a note in the
    log when it records none (written before checkpoints kept it) or not a number of seconds >= 0."""
    value = ckpt.get(ELAPSED_KEY)
    if value is None:
        logger.info("%s records no elapsed training time (an older checkpoint): time/elapsed_s counts from 0 "
                    "again in this attempt", path)
        return 0.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        logger.warning("%s records elapsed training time %r, not a number of seconds >= 0: time/elapsed_s "
                       "counts from 0 again in this attempt", path, value)
        return 0.0
    return seconds


class ElapsedTime:
    """Seconds of training: the earlier attempts' (``before``, the resumed checkpoint's) plus this
    attempt's since :meth:`start`."""

    def __init__(self, before: float = 0.0) -> None:
        self.before = float(before)
        self._start: float | None = None

    def start(self) -> float:
        """Start this attempt's count; returns its ``time.perf_counter()`` value."""
        self._start = time.perf_counter()
        return self._start

    def __call__(self) -> float:
        if self._start is None:
            return self.before
        return self.before + time.perf_counter() - self._start
