"""Prediction files of cityscapesScripts' instance-level evaluator (``csEvalInstanceLevelSemanticLabeling``),
so that the official script can score panfpn's instances.

Per image ``<out_dir>/<image id>_pred.txt`` (the script finds it by the ``<city>_<seq>_<frame>*.txt``
pattern anywhere below ``CITYSCAPES_RESULTS``; every image gets one, empty when it has no instance),
one line per instance of the 8 scored classes: ``masks/<image id>_<k>.png <label id> <score>``, the
mask path relative to the text file, the Cityscapes **label** id (car = 26, also for a model trained
with train ids) and the score as Python's shortest exact float text (the script reads back the very
float scored in memory). Each mask is a single-channel PNG, 255 on the instance, 0 elsewhere. Masks
are written before the text file that names them, each atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from panfpn.utils.atomic import atomic_write, save_png_atomic

SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")  # the script splits lines on spaces; ids become file names


def full_mask(masks: Any, k: int) -> np.ndarray:
    """bool ``[H, W]`` mask ``k`` of a ``[K, H, W]`` array / tensor, a sequence of masks or a
    ``BoxMasks`` (made full size one at a time)."""
    mask = masks.mask(k) if hasattr(masks, "mask") else masks[k]
    return mask.detach().cpu().numpy().astype(bool) if isinstance(mask, torch.Tensor) else np.asarray(mask, bool)


def write_instance_files(out_dir: str | Path, image_id: Any, labels: Sequence[int], scores: Sequence[float],
                         masks: Any, classes: Mapping[int, int]) -> Path:
    """Write one image's ``<image id>_pred.txt`` and mask PNGs into ``out_dir``; returns the text
    file. ``labels``: dataset category ids; ``classes``: dataset id -> scored class index
    (:func:`panfpn.evaluation.cityscapes_ap.cityscapes_classes`); other labels are not written."""
    from panfpn.evaluation.cityscapes_ap import INSTANCE_CLASSES

    name = str(image_id)
    if not SAFE_ID.fullmatch(name):
        raise ValueError(f"image id {name!r}: Cityscapes prediction files need an id of letters, digits, "
                         "'_', '.' and '-' (it names the files and the script splits lines on spaces)")
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (label, score) in enumerate(zip(labels, scores)):
        cls = classes.get(int(label))
        if cls is None:
            continue
        rel = f"masks/{name}_{k}.png"
        save_png_atomic(out_dir / rel, full_mask(masks, k).astype(np.uint8) * 255)
        lines.append(f"{rel} {INSTANCE_CLASSES[cls][1]} {float(score)!r}\n")
    text = "".join(lines)
    return atomic_write(out_dir / f"{name}_pred.txt", lambda f: f.write(text), mode="w")


__all__ = ["full_mask", "write_instance_files"]
