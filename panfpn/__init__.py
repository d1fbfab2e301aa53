"""panfpn: Panoptic FPN training, inference and exact PQ evaluation.

``panfpn.build_model(cfg)`` builds the model of a composed hydra config (weights loaded);
``panfpn.load_weights(model, source)`` loads ours / Detectron2 / torchvision weights.
Imported lazily so ``import panfpn`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "panfpn.modeling.build",
    "load_weights": "panfpn.modeling.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'panfpn' has no attribute {name!r}")
