"""Official Mask2Former Swin backbone names (``D2SwinTransformer``, facebookresearch/Mask2Former
``mask2former/modeling/backbone/swin.py``) -> ours (torchvision ``SwinTransformer`` in
:class:`~panfpn.modeling.mask2former.backbone.BackboneBody` with ``out_norms``).

=================================================  ==================================================
official                                           ours (``backbone.`` +)
=================================================  ==================================================
``patch_embed.proj.*`` / ``patch_embed.norm.*``     ``body.features.0.0.*`` / ``body.features.0.2.*``
``layers.{i}.blocks.{j}.<norm1|attn.*|norm2>``      ``body.features.{2i+1}.{j}.<same>``
``layers.{i}.blocks.{j}.mlp.fc1.*`` / ``fc2.*``     ``body.features.{2i+1}.{j}.mlp.0.*`` / ``mlp.3.*``
``layers.{i}.downsample.<reduction|norm>.*``       ``body.features.{2i+2}.<same>.*``
``norm{i}.*`` (one LayerNorm per output)           ``out_norms.{i}.*``
=================================================  ==================================================

Both patch mergings concatenate the 2x2 neighbours in the same order ([0::2, 0::2], [1::2, 0::2],
[0::2, 1::2], [1::2, 1::2]), so ``downsample.reduction`` / ``norm`` load unchanged. The official
``relative_position_index`` buffer is ``[N, N]`` (N = window area), torchvision's the same values
flattened to ``[N * N]``: it is checked against ours, not loaded (ours is kept when the file lacks
it). ``attn_mask`` buffers (written by the original classification Swin code, size-dependent) are
recomputed in the forward, not loaded.

The official training starts from ImageNet classification Swin files (``MODEL.WEIGHTS:
swin_tiny_patch4_window7_224.pkl`` ...: the Swin release ``.pth``'s ``"model"`` written by
``tools/convert-pretrained-swin-model-to-d2.py`` with ``pickle.dump``). Their names are the same
without ``backbone.``; they add the classifier (``norm.*``, ``head.*``: not used) and lack the
output norms (``norm0..3``: ``D2SwinTransformer`` creates them fresh, ours stay at their
initialisation): :func:`imagenet_swin_to_ours`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from panfpn.modeling.weights import WeightsError

_BLOCK_PARTS = (r"norm1|norm2|attn\.qkv|attn\.proj|attn\.relative_position_bias_table|attn\.relative_position_index"
                r"|mlp\.[03]")
_RULES = (
    (re.compile(r"^backbone\.body\.features\.0\.0\.(weight|bias)$"), lambda m: f"patch_embed.proj.{m[1]}"),
    (re.compile(r"^backbone\.body\.features\.0\.2\.(weight|bias)$"), lambda m: f"patch_embed.norm.{m[1]}"),
    (re.compile(rf"^backbone\.body\.features\.(\d*[13579])\.(\d+)\.({_BLOCK_PARTS})((?:\.weight|\.bias)?)$"),
     lambda m: f"layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{_MLP.get(m[3], m[3])}{m[4]}"),
    (re.compile(r"^backbone\.body\.features\.(\d*[02468])\.(reduction|norm)\.(weight|bias)$"),
     lambda m: f"layers.{int(m[1]) // 2 - 1}.downsample.{m[2]}.{m[3]}" if int(m[1]) > 0 else None),
    (re.compile(r"^backbone\.out_norms\.(\d)\.(weight|bias)$"), lambda m: f"norm{m[1]}.{m[2]}"),
)
_MLP = {"mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
# Size-dependent shift masks that the classification Swin code stores; recomputed in the forward.
SWIN_IGNORED = re.compile(r"^backbone\.layers\.\d+\.blocks\.\d+\.attn_mask$")
# The classification Swin's last LayerNorm and classifier, which a segmentation backbone does not have.
CLASSIFIER = re.compile(r"^(norm|head)\.(weight|bias)$")
_INDEX = "relative_position_index"


def official_swin_name(name: str) -> str | None:
    """The official name of one of our Swin backbone keys (None: not a Swin backbone key)."""
    for pattern, rule in _RULES:
        m = pattern.match(name)
        if m:
            official = rule(m)
            return f"backbone.{official}" if official else None
    return None


def check_position_index(ours_key: str, ours: torch.Tensor, value: torch.Tensor, report: Any) -> torch.Tensor | None:
    """Our ``relative_position_index`` if the file's (``[N, N]``) holds the same values, None (and a
    report entry) if its size differs; another order is a :class:`WeightsError` naming the key."""
    if value.numel() != ours.numel():
        report.shape_mismatch.append((ours_key, tuple(ours.shape), tuple(value.shape)))
        return None
    if not torch.equal(value.reshape(-1).to(ours.dtype), ours.reshape(-1)):
        raise WeightsError(f"weights {report.source}: {ours_key} (official {official_swin_name(ours_key)}) is "
                           "not the relative position index of the model's window; the file's Swin "
                           "differs from model.backbone.arch")
    return ours.clone()


def swin_value(ours_key: str, value: torch.Tensor, ours: Mapping[str, torch.Tensor],
               report: Any) -> torch.Tensor | None:
    """``value`` as our tensor ``ours_key`` (the position index is checked, the rest is as it is)."""
    if ours_key.endswith(_INDEX):
        return check_position_index(ours_key, ours[ours_key], value, report)
    return value


def keep_position_indices(ours: Mapping[str, torch.Tensor], mapped: dict[str, torch.Tensor], report: Any) -> None:
    """Our ``relative_position_index`` buffers the file lacks (constants of the window size, not
    weights) are kept as they are, with a note; a size mismatch stays reported."""
    mismatched = {key for key, _, _ in report.shape_mismatch}
    kept = [k for k in ours if k.endswith(_INDEX) and k not in mapped and k not in mismatched]
    for key in kept:
        mapped[key] = ours[key].clone()
    if kept:
        report.notes.append(f"{len(kept)} relative_position_index buffer(s) not in the file: the model's kept")


def map_by_name(state: Mapping[str, torch.Tensor], to_ours: Mapping[str, str], ours: Mapping[str, torch.Tensor],
                report: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state``'s tensors under our names (``to_ours``: file name -> ours; values through
    :func:`swin_value`), and the file's names that have none, in file order, for the caller to sort."""
    mapped: dict[str, torch.Tensor] = {}
    others = []
    for name, value in state.items():
        if name not in to_ours:
            others.append(name)
            continue
        converted = swin_value(to_ours[name], value, ours, report)
        if converted is not None:
            mapped[to_ours[name]] = converted
    return mapped, others


def imagenet_swin_to_ours(model: nn.Module, state: Mapping[str, torch.Tensor], report: Any) -> dict[str, torch.Tensor]:
    """An ImageNet classification Swin state dict (official names without ``backbone.``) under our
    ``backbone.body.*`` names; the classifier and ``attn_mask`` buffers are left out with a note, any
    other name the body lacks goes to ``report.unexpected`` (the strict load refuses it)."""
    ours = model.state_dict()
    to_ours = {n.removeprefix("backbone."): k for k in ours
               if k.startswith("backbone.body.") and (n := official_swin_name(k)) is not None}
    mapped, others = map_by_name(state, to_ours, ours, report)
    classifier, masks = [], 0
    for name in others:
        if CLASSIFIER.match(name):
            classifier.append(name)
        elif SWIN_IGNORED.match(f"backbone.{name}"):
            masks += 1
        else:
            report.unexpected.append(name)
    report.notes.append("an ImageNet classification Swin (official Mask2Former initialisation, MODEL.WEIGHTS "
                        "swin_*.pkl): loaded into the backbone body, everything else left as initialised")
    if classifier:
        report.notes.append(f"classifier not used: {', '.join(classifier)}")
    if masks:
        report.notes.append(f"{masks} attn_mask buffer(s) not loaded (recomputed for each input size)")
    keep_position_indices(ours, mapped, report)
    norms = sorted({k.rsplit(".", 1)[0] for k in ours if k.startswith("backbone.out_norms.")})
    if norms:
        report.notes.append(f"{len(norms)} output norms ({norms[0]} ..., official norm0..norm{len(norms) - 1}) "
                            "not in an ImageNet file: left as initialised, as the official training does")
    return mapped
