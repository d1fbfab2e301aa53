"""Detectron2's ImageNet ResNet initialisation files -> torchvision ResNet names (our ``backbone.body``).

Two layouts, both read by :func:`panfpn.modeling.panoptic_fpn.detectron2_import.load_d2_pickle`:

- ``ImageNetPretrained/MSRA/R-50.pkl`` / ``R-101.pkl`` (every official Panoptic FPN config's
  ``MODEL.WEIGHTS``): Caffe2 blob names (``conv1_w``, ``res_conv1_bn_s`` / ``_b``,
  ``res{2..5}_{i}_branch2{a,b,c}_w`` with ``_bn_s`` / ``_bn_b``, ``res{2..5}_0_branch1_*``,
  ``fc1000_*``, SGD ``*_momentum``). The networks were trained in Caffe: BGR input minus the Caffe
  mean with std 1, stride in the bottleneck's 1x1 conv, batch norm folded into a per-channel scale
  ``s`` and bias ``b``. Detectron2 loads ``s`` / ``b`` as FrozenBatchNorm weight / bias and, since
  the file has no statistics, running mean 0 and running variance 1 (``batch_norm.py``), which is
  what we load too (``(x - 0) / sqrt(1 + eps) * s + b``, the value Detectron2 computes).
- ``ImageNetPretrained/torchvision/R-50.pkl``, a torchvision ResNet renamed by Detectron2's
  ``tools/convert-torchvision-to-d2.py`` (``stem.conv1``, ``resN.i.convK.norm``, ``shortcut``):
  the torchvision network, used with RGB input, ImageNet mean / std and the stride in the 3x3 conv.
"""

from __future__ import annotations

import re

import torch

MSRA = "detectron2 imagenet msra"
CONVERTED_TORCHVISION = "detectron2 imagenet torchvision"
# Blocks per stage (res2..res5) -> ResNet depth, as in the MSRA / torchvision releases.
DEPTH_OF_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}

_STEM = {"conv1_w": "conv1.weight", "res_conv1_bn_s": "bn1.weight", "res_conv1_bn_b": "bn1.bias"}
_BLOB = re.compile(r"^res([2-5])_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b)$")
_BRANCH = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3"),
           "1": ("downsample.0", "downsample.1")}
_PARAM = {"bn_s": "weight", "bn_b": "bias"}
_CLASSIFIER = ("fc1000_w", "fc1000_b")


class ImageNetFileError(ValueError):
    """A Detectron2 ImageNet file with blobs that are not (or not all) an ImageNet ResNet's."""


def msra_to_torchvision(state: dict[str, torch.Tensor], source: str,
                        model_depth: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """The MSRA blobs under torchvision names (BGR first conv, FrozenBN statistics 0 / 1 added) and
    the file's ResNet depth, told by its blocks per stage (0 when no known depth has them). Unknown
    blobs, or blobs missing from the file's depth (from ``model_depth`` when the blocks fit no
    depth), raise :class:`ImageNetFileError` naming them; the classifier and SGD momenta are dropped."""
    blobs = {k: v for k, v in state.items() if not k.endswith("_momentum") and k not in _CLASSIFIER}
    unknown = sorted(k for k in blobs if k not in _STEM and not _BLOB.match(k))
    if unknown:
        raise ImageNetFileError(
            f"{source}: {len(unknown)} blob(s) that are not an ImageNet ResNet's ({_short(unknown)}): a "
            "Detectron1 detection model, or another network? Only Detectron2's ImageNetPretrained ResNet "
            "files (conv1_w, res_conv1_bn_*, resN_i_branch* blobs) are read in Caffe2 names")
    blocks = _blocks_per_stage(blobs)
    if blocks not in DEPTH_OF_BLOCKS:
        blocks = next((b for b, d in DEPTH_OF_BLOCKS.items() if d == model_depth), blocks)
    missing = [k for k in _expected_blobs(blocks) if k not in blobs]
    if missing:
        raise ImageNetFileError(f"{source}: {len(missing)} blob(s) of a ResNet with {list(blocks)} blocks per "
                                f"stage are not in the file ({_short(missing)}): a truncated or damaged file?")
    out: dict[str, torch.Tensor] = {}
    for name, value in blobs.items():
        m = _BLOB.match(name)
        if m is None:
            out[_STEM[name]] = value
            continue
        conv, norm = _BRANCH[m[3]]
        prefix = f"layer{int(m[1]) - 1}.{m[2]}"
        out[f"{prefix}.{conv}.weight" if m[4] == "w" else f"{prefix}.{norm}.{_PARAM[m[4]]}"] = value
    for key in [k for k in out if k.endswith(".weight") and out[k].dim() == 1]:  # each FrozenBN scale
        base = key[: -len("weight")]
        out[f"{base}running_mean"] = torch.zeros_like(out[key])
        out[f"{base}running_var"] = torch.ones_like(out[key])
    return out, DEPTH_OF_BLOCKS.get(blocks, 0)


def _blocks_per_stage(blobs: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks of res2..res5, from the highest block index named in each stage (0 if none)."""
    count = {stage: 0 for stage in "2345"}
    for name in blobs:
        m = _BLOB.match(name)
        if m:
            count[m[1]] = max(count[m[1]], int(m[2]) + 1)
    return tuple(count.values())


def _expected_blobs(blocks: tuple[int, ...]) -> list[str]:
    names = list(_STEM)
    for stage, n in zip("2345", blocks):
        for i in range(max(n, 1)):
            for branch in ("2a", "2b", "2c") + (("1",) if i == 0 else ()):
                names += [f"res{stage}_{i}_branch{branch}_{p}" for p in ("w", "bn_s", "bn_b")]
    return names


_CONVERTED = [(re.compile(r"^stem\.conv1\.weight$"), "conv1.weight"),
              (re.compile(r"^stem\.conv1\.norm\.(\w+)$"), r"bn1.\1"),
              (re.compile(r"^stem\.fc\.(weight|bias)$"), r"fc.\1"),
              (re.compile(r"^res([2-5])\.(\d+)\.conv(\d)\.norm\.(\w+)$"), r"layer{\1}.\2.bn\3.\4"),
              (re.compile(r"^res([2-5])\.(\d+)\.conv(\d)\.weight$"), r"layer{\1}.\2.conv\3.weight"),
              (re.compile(r"^res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)$"), r"layer{\1}.\2.downsample.1.\3"),
              (re.compile(r"^res([2-5])\.(\d+)\.shortcut\.weight$"), r"layer{\1}.\2.downsample.0.weight")]


def converted_torchvision_names(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The torchvision names back from ``convert-torchvision-to-d2.py``'s ``stem.*`` / ``resN.*``
    (``fc.*`` included: the caller drops it as for any torchvision file). A name the tool does not
    write raises :class:`ImageNetFileError` naming it."""
    out, unknown = {}, []
    for name, value in state.items():
        for pattern, template in _CONVERTED:
            m = pattern.match(name)
            if m:
                new = m.expand(template)
                out[re.sub(r"layer\{(\d)\}", lambda s: f"layer{int(s[1]) - 1}", new)] = value
                break
        else:
            unknown.append(name)
    if unknown:
        raise ImageNetFileError(f"{source}: {len(unknown)} entr(ies) that tools/convert-torchvision-to-d2.py does "
                                f"not write ({_short(sorted(unknown))})")
    return out


def _short(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


_CAFFE2_NAME = re.compile(r"^(conv1_w|res_conv1_bn_[sb]|res\d_\d+_branch\w+_[wsb]|fc1000_[wb])$")
_CONVERTED_NAME = re.compile(r"^(stem|res[2-5])\.")


def imagenet_kind(state: dict[str, object]) -> str | None:
    """:data:`MSRA` for Caffe2 blob names (no dotted name, some ResNet blob; other blobs are then
    refused by name), :data:`CONVERTED_TORCHVISION` when every name is ``stem.*`` / ``res{2..5}.*``,
    else None (a Detectron2 model)."""
    if not state:
        return None
    if all(_CONVERTED_NAME.match(k) for k in state):
        return CONVERTED_TORCHVISION
    if not any("." in k for k in state) and any(_CAFFE2_NAME.match(k) for k in state):
        return MSRA
    return None
