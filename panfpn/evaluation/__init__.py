"""Evaluation: panoptic quality (files and in-memory), semantic mIoU, COCO AP, prediction writers.

Names are imported lazily so that ``python -m panfpn.evaluation.pq`` and its worker processes
never pay for importing torch.
"""

from __future__ import annotations

from panfpn.utils.lazy import lazy_getattr

_EXPORTS = {
    "pq_compute": "panfpn.evaluation.pq",
    "PQInputError": "panfpn.evaluation.pq_rules",
    "PQAccumulator": "panfpn.evaluation.accumulator",
    "SemSegEvaluator": "panfpn.evaluation.semantic",
    "COCOAPEvaluator": "panfpn.evaluation.coco_ap",
    "coco_ap": "panfpn.evaluation.coco_ap",
    "instances_from_panoptic": "panfpn.evaluation.coco_ap",
    "PanopticPredictionWriter": "panfpn.evaluation.writer",
    "model_segments_to_dataset": "panfpn.evaluation.label_mapping",
    "SemanticPredictionWriter": "panfpn.evaluation.writer",
    "prediction_file_stem": "panfpn.evaluation.writer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
