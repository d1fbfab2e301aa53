"""panfpn: Panoptic FPN training, inference and exact PQ evaluation.

``panfpn.build_model(cfg)`` builds the model of a composed hydra config (weights loaded);
``panfpn.load_weights(model, source)`` loads ours / Detectron2 / torchvision weights;
``panfpn.panoptic_fpn_r50(num_thing_classes, num_stuff_classes, weights=...)`` (and ``_r101``,
``_small``) build the packaged model configs from Python, without hydra;
``panfpn.merge_predictions(sem_labels, masks, scores, labels, metadata=..., rules=...)`` merges a
semantic model's and an instance model's predictions (``panfpn.MergeThresholds``: the rules).
Imported lazily so ``import panfpn`` stays cheap.
"""

from __future__ import annotations

from panfpn.utils.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "MergeThresholds": "panfpn.modeling.merge",
    "build_model": "panfpn.modeling.build",
    "load_weights": "panfpn.modeling.weights",
    "merge_predictions": "panfpn.modeling.merge_predictions",
    "panoptic_fpn_r50": "panfpn.modeling.zoo",
    "panoptic_fpn_r101": "panfpn.modeling.zoo",
    "panoptic_fpn_small": "panfpn.modeling.zoo",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
