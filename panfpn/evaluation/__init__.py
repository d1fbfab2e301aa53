"""Evaluation: panoptic quality (files and in-memory), semantic mIoU, COCO AP, prediction writer.

Names are imported lazily so that ``python -m panfpn.evaluation.pq`` and its worker processes
never pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pq_compute": "panfpn.evaluation.pq",
    "PQInputError": "panfpn.evaluation.pq_rules",
    "PQAccumulator": "panfpn.evaluation.accumulator",
    "SemSegEvaluator": "panfpn.evaluation.semantic",
    "COCOAPEvaluator": "panfpn.evaluation.coco_ap",
    "coco_ap": "panfpn.evaluation.coco_ap",
    "instances_from_panoptic": "panfpn.evaluation.coco_ap",
    "PanopticPredictionWriter": "panfpn.evaluation.writer",
    "model_segments_to_dataset": "panfpn.evaluation.writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'panfpn.evaluation' has no attribute {name!r}")
