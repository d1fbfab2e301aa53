"""Official Mask2Former model-zoo checkpoints (facebookresearch/Mask2Former, Detectron2 ``.pkl``)
by name: ``backbone.stem.* / backbone.resN.*`` (Detectron2 ResNet) -> ``backbone.body.*``
(torchvision ResNet), ``sem_seg_head.pixel_decoder.*`` -> ``pixel_decoder.*``,
``sem_seg_head.predictor.*`` -> ``predictor.*`` (same layout below the prefix); the Swin backbones
(``backbone.patch_embed.* / layers.* / norm{i}.*``, ``D2SwinTransformer``) by
:mod:`panfpn.modeling.mask2former.official_swin`.

Conventions: the official R50 models take RGB input normalised with the ImageNet mean / std (the
torchvision R-50 initialisation, ``STRIDE_IN_1X1: False``), as this model does: no channel flip,
no stride move; the official Swin models take the same input. The class head has ``num_classes + 1``
rows, "no object" last, classes in Detectron2's contiguous order: COCO panoptic = the 133 categories
by id (80 things, then 53 stuff: ``class_order=things_first``), Cityscapes = the 19 train ids
(``class_order=semantic``); the load checks the shapes, the order is the model config's
``class_order`` (docs/mask2former.md).

The released model-zoo files name the decoder's learnable query features ``static_query`` (written
before the official decoder renamed them ``query_feat``; its ``_load_from_state_dict`` renames them
when loading a file without version metadata, which every ``.pkl`` is): both names load.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from panfpn.modeling.mask2former.official_swin import (SWIN_IGNORED, keep_position_indices, map_by_name,
                                                       official_swin_name)
from panfpn.modeling.panoptic_fpn.detectron2_import import ours_to_d2
from panfpn.modeling.weights import WeightsError

# Entries of official checkpoints that are not weights of ours: the criterion's class weights
# (set by the config), BN bookkeeping, normalisation (non-persistent there; ImageNet RGB here: a file
# that holds other values is refused, check_recorded_normalisation).
OFFICIAL_IGNORED = re.compile(r"^criterion\.empty_weight$|num_batches_tracked$|^pixel_(mean|std)$")
_HEADS = ("pixel_decoder.", "predictor.")
# The model-zoo files' older name -> the official decoder's current name.
LEGACY_NAMES = {"sem_seg_head.predictor.static_query.weight": "sem_seg_head.predictor.query_feat.weight"}


def official_name(name: str) -> str | None:
    """The official checkpoint's name of one of our Mask2Former state-dict keys (None: no counterpart)."""
    if name.startswith(_HEADS):
        return f"sem_seg_head.{name}"
    swin = official_swin_name(name)
    if swin is not None:
        return swin
    if name.startswith("backbone.body."):
        d2 = ours_to_d2(name)  # the Panoptic FPN names: backbone.bottom_up.<Detectron2 ResNet name>
        return d2.replace("backbone.bottom_up.", "backbone.", 1) if d2 else None
    return None


def legacy_renamed(state: Mapping[str, torch.Tensor], report: Any) -> Mapping[str, torch.Tensor]:
    """``state`` with the model-zoo files' older names (:data:`LEGACY_NAMES`) under the current ones,
    with a note; a file holding both names keeps both, so the strict load refuses the older one by name."""
    old = [n for n, new in LEGACY_NAMES.items() if n in state and new not in state]
    if not old:
        return state
    report.notes.append(", ".join(f"{n} loaded as {LEGACY_NAMES[n]}" for n in old)
                        + " (the model-zoo files' older name, renamed as the official decoder does)")
    return {LEGACY_NAMES.get(n, n) if n in old else n: v for n, v in state.items()}


def check_class_order(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse an official class head whose rows the model would read in another order.

    In ``sem_seg_mode: all`` (each category its own semantic label) Detectron2's contiguous order, the
    official head's, is the semantic label order (Cityscapes: the train ids, 11 stuff then 8 things);
    a model whose class k is not semantic label k (``class_order: things_first`` on such data) would
    silently give every official class another category. Other class counts are left to the loader."""
    space = getattr(model, "space", None)
    head = state.get("sem_seg_head.predictor.class_embed.weight")
    if space is None or head is None or int(head.shape[0]) != space.num_classes + 1:
        return
    sem = list(space.sem_label)
    if len(set(sem)) == len(sem) and sem != sorted(sem):
        raise WeightsError(f"weights {source}: official Mask2Former classes are in Detectron2's contiguous order, "
                           "here the semantic labels (Cityscapes: the train ids), but model.class_order=things_first "
                           "puts the thing classes first: set model.class_order=semantic")


def check_recorded_normalisation(state: Mapping[str, torch.Tensor], source: str,
                                 expected: Mapping[str, tuple[float, ...]]) -> None:
    """Refuse a file that records another ``pixel_mean`` / ``pixel_std`` than the official models'
    (the official code does not save them; a file that does states what its model was trained with,
    which the load would otherwise replace by the ImageNet values without a word)."""
    other = []
    for name, values in expected.items():
        recorded = state.get(name)
        if recorded is not None and not torch.allclose(torch.as_tensor(recorded, dtype=torch.float64).flatten(),
                                                       torch.tensor(values, dtype=torch.float64), atol=1e-3):
            other.append(f"{name} {[round(float(v), 3) for v in torch.as_tensor(recorded).flatten()]}")
    if other:
        raise WeightsError(f"weights {source} record {', '.join(other)}, not the ImageNet RGB values "
                           f"{tuple(expected['pixel_mean'])} / {tuple(expected['pixel_std'])} that the official "
                           "Mask2Former models take and this loader sets: a model trained with other input "
                           "normalisation (or BGR input) would get wrong inputs")


# (bottleneck blocks?, res4 blocks) -> ResNet depth, Detectron2's stage layouts
_RESNET_DEPTHS = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101, (True, 36): 152}


def check_resnet_depth(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a ResNet file of another depth naming the key to set (official R101: ``model=mask2former_r50
    model.backbone.depth=101``), instead of a list of hundreds of ``backbone.res4.*`` tensors."""
    built = getattr(getattr(model, "backbone", None), "depth", 0)
    blocks = {m.group(1) for n in state if (m := re.match(r"backbone\.res4\.(\d+)\.", n))}
    bottleneck = any(re.match(r"backbone\.res\d\.\d+\.conv3\.", n) for n in state)
    depth = _RESNET_DEPTHS.get((bottleneck, len(blocks)))
    if built and depth and depth != built:
        raise WeightsError(f"weights {source} are an official Mask2Former with a ResNet-{depth} backbone "
                           f"({len(blocks)} res4 blocks) but the model's is a ResNet-{built}: set "
                           f"model.backbone.depth={depth}")


def official_to_ours(model: nn.Module, state: Mapping[str, torch.Tensor], report: Any) -> dict[str, torch.Tensor]:
    """``state`` under our names; names with no counterpart go to ``report.unexpected`` (the strict
    load then refuses them), shapes are checked by the loader."""
    ours = model.state_dict()
    to_ours = {n: k for k in ours if (n := official_name(k)) is not None}
    check_class_order(model, state, report.source)
    check_resnet_depth(model, state, report.source)
    state = legacy_renamed(state, report)
    mapped, others = map_by_name(state, to_ours, ours, report)
    skipped_masks = 0
    for name in others:
        if SWIN_IGNORED.search(name):
            skipped_masks += 1
        elif not OFFICIAL_IGNORED.search(name):
            report.unexpected.append(name)
    if skipped_masks:
        report.notes.append(f"{skipped_masks} Swin attn_mask buffer(s) not loaded (recomputed for each input size)")
    keep_position_indices(ours, mapped, report)
    mean = getattr(model, "pixel_mean", None)
    if mean is not None:
        from panfpn.modeling.mask2former.model import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

        check_recorded_normalisation(state, report.source, {"pixel_mean": IMAGENET_MEAN_RGB,
                                                            "pixel_std": IMAGENET_STD_RGB})
        mapped["pixel_mean"] = torch.tensor(IMAGENET_MEAN_RGB).view(3, 1, 1)
        mapped["pixel_std"] = torch.tensor(IMAGENET_STD_RGB).view(3, 1, 1)
        report.notes.append("pixel mean/std set to the official ImageNet RGB values")
    return mapped
