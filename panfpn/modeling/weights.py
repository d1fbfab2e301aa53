"""One entry point for every kind of weights: :func:`load_weights`.

Accepted sources:
  - a torchvision ImageNet weights enum, or its name (``"ResNet50_Weights.IMAGENET1K_V1"``):
    fetched by torchvision (cached under ``$TORCH_HOME``) and loaded into the ResNet body;
  - a local torchvision ResNet state dict (``.pth``): loaded into the ResNet body;
  - our own checkpoints (``.pth`` / ``.pt``, a bare state dict or a dict with a ``"model"`` key);
  - Detectron2 Panoptic FPN checkpoints: model-zoo ``.pkl`` (read without general unpickling) or
    ``.pth``; converted by name, with their BGR / Caffe-mean and ``stride_in_1x1`` conventions and
    the semantic head's rows permuted into our label order.
Tensor files are always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from panfpn.modeling.detectron2_import import (
    D2_IGNORED, D2_PIXEL_MEAN_BGR, D2_PIXEL_STD_BGR, SEM_PREDICTOR_KEYS, is_d2_state_dict, load_d2_pickle,
    ours_to_d2, remap_d2_semantic_predictor,
)

logger = logging.getLogger("panfpn")
_ENUM_NAME = re.compile(r"^\w+_Weights\.\w+$")
_RESNET_KEY = re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\.|fc\.(weight|bias))")


@dataclass
class LoadReport:
    """What :func:`load_weights` did. Key names are the model's own except ``unexpected``
    (the source's names) and the shape-mismatch entries ``(model key, model shape, source shape)``."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model entry in scope was loaded and every source entry was used."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = [f"weights {self.source} ({self.format}): {len(self.loaded)} tensors loaded"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  NOT in the file, left as initialised ({len(self.missing)}): {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  in the file but not mapped ({len(self.unexpected)}): {_short(self.unexpected)}")
        for key, ours, theirs in self.shape_mismatch:
            lines.append(f"  shape mismatch, skipped: {key} model {list(ours)} vs file {list(theirs)}")
        return "\n".join(lines)


def _short(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def load_weights(model: nn.Module, source: str | os.PathLike | torchvision.models.WeightsEnum) -> LoadReport:
    """Load ``source`` into ``model`` (a :class:`~panfpn.modeling.panoptic_fpn.PanopticFPN`) in place.

    Never raises for keys that do not fit: the returned :class:`LoadReport` lists missing,
    unexpected and shape-mismatched keys (check ``report.complete``). Raises ``FileNotFoundError``
    for a missing file, ``pickle.UnpicklingError`` for a pickle holding anything but arrays.
    """
    if isinstance(source, torchvision.models.WeightsEnum) or (
            isinstance(source, str) and _ENUM_NAME.match(source) and not os.path.exists(source)):
        return _load_torchvision_enum(model, source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (and is not a torchvision weights name "
                                "like 'ResNet50_Weights.IMAGENET1K_V1')")
    if path.suffix == ".pkl":
        return _load_d2(model, load_d2_pickle(path), str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (or a dict with a 'model' state dict)")
    if is_d2_state_dict(state):
        return _load_d2(model, state, str(path))
    if all(_RESNET_KEY.match(k) for k in state):
        return _load_into(model, {f"backbone.body.{k}": v for k, v in state.items()
                                  if not k.startswith("fc.")},
                          LoadReport(str(path), "torchvision resnet"), scope="backbone.body.")
    return _load_into(model, dict(state), LoadReport(str(path), "panfpn"), scope="")


def _load_torchvision_enum(model: nn.Module, source: Any) -> LoadReport:
    weights = torchvision.models.get_weight(source) if isinstance(source, str) else source
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError)
        raise RuntimeError(
            f"could not fetch torchvision weights {weights}: {err}. Without internet, download "
            f"{weights.url} elsewhere and pass the local file as weights=, or put it in "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}") from err
    mapped = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    report = LoadReport(str(weights), "torchvision imagenet")
    return _load_into(model, mapped, report, scope="backbone.body.")


def _load_d2(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    report = LoadReport(source, "detectron2")
    ours = model.state_dict()
    d2_to_ours = {d2: k for k in ours if (d2 := ours_to_d2(k)) is not None}
    mapped: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name in d2_to_ours:
            mapped[d2_to_ours[name]] = value
        elif D2_IGNORED.search(name):
            continue
        else:
            report.unexpected.append(name)
    # Detectron2 weights see BGR images: flipping the first conv's input channels makes them
    # see the same values from our RGB input.
    conv1 = "backbone.body.conv1.weight"
    if conv1 in mapped:
        mapped[conv1] = mapped[conv1].flip(1)
        report.notes.append("first conv flipped from BGR to RGB input channels")
    if hasattr(model, "pixel_mean"):
        mapped["pixel_mean"] = torch.tensor(D2_PIXEL_MEAN_BGR[::-1]).view(3, 1, 1)
        mapped["pixel_std"] = torch.tensor(D2_PIXEL_STD_BGR[::-1]).view(3, 1, 1)
        report.notes.append(f"pixel mean/std set to Detectron2's Caffe values in RGB order "
                            f"{D2_PIXEL_MEAN_BGR[::-1]} / {D2_PIXEL_STD_BGR}")
    sem_key = SEM_PREDICTOR_KEYS[0]
    if sem_key in ours:
        note = remap_d2_semantic_predictor(mapped, ours[sem_key].shape[0],
                                           getattr(model, "thing_sem_labels", None), source)
        report.notes += [note] if note else []
    backbone = getattr(model, "backbone", None)
    if backbone is not None and getattr(backbone, "depth", 0) >= 50 and not backbone.stride_in_1x1:
        backbone.stride_in_1x1 = True
        report.notes.append("backbone switched to stride_in_1x1=True (MSRA bottleneck layout)")
    return _load_into(model, mapped, report, scope="", ignore_missing=("num_batches_tracked",))


def _load_into(model: nn.Module, mapped: dict[str, torch.Tensor], report: LoadReport, *, scope: str,
               ignore_missing: tuple[str, ...] = ()) -> LoadReport:
    """Copy the entries of ``mapped`` whose name and shape fit; fill in the report."""
    ours = model.state_dict()
    usable = {}
    for key, value in mapped.items():
        if key not in ours:
            if not key.endswith("num_batches_tracked"):  # BN bookkeeping, not a weight
                report.unexpected.append(key)
        elif tuple(ours[key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, tuple(ours[key].shape), tuple(value.shape)))
        else:
            usable[key] = value.to(ours[key].dtype)
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    mismatched = {key for key, _, _ in report.shape_mismatch}
    report.missing = sorted(k for k in ours if k.startswith(scope) and k not in usable
                            and k not in mismatched and not k.endswith(ignore_missing))
    log = logger.info if report.complete else logger.warning
    log("%s", report)
    return report
