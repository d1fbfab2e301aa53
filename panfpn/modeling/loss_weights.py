"""The check every configured loss weight passes: a finite number >= 0 (0 turns a loss off).

A negative weight trains *up* that loss (gradient ascent) and a NaN one poisons the total, yet
both build and start a run; ``model.loss_weights.loss_sem_seg=-1`` used to train without a word.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def check_loss_weights(weights: Mapping[str, Any], where: str) -> None:
    """ValueError naming each weight of ``weights`` (``where``: the owner's name, e.g.
    ``loss_weights``) that is not a finite number >= 0 (a bool is no weight)."""
    bad = {k: v for k, v in weights.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"{where}: each weight must be a finite number >= 0 (0 turns a loss off), got {bad}")
