"""Detectron2 Panoptic FPN checkpoints: a safe ``.pkl`` reader and the parameter-name mapping.

Detectron2 model-zoo files are pickles of ``{"model": {name: numpy array}, "__author__": ...}``;
third-party files converted with a plain ``pickle.dump`` of torch tensors (the official
Mask2Former ImageNet Swin ``.pkl``) hold tensors instead. They are read with an unpickler that can
only rebuild numpy arrays, CPU torch tensors (:mod:`panfpn.modeling.pickled_tensors`: storages read
by torch's weights-only reader) and plain containers, so a crafted file cannot run code. Names are
mapped one by one from ours to Detectron2's (:func:`ours_to_d2`); loading inverts that table over
the model's own keys.

Conventions of those weights that our model does differently, handled in
:func:`panfpn.modeling.weights.load_weights`:

- BGR input with the Caffe mean (103.530, 116.280, 123.675) and std 1 (ours is RGB: the first
  conv's input channels are flipped and the mean/std reversed);
- the stage stride on the bottleneck's 1x1 conv (``stride_in_1x1``);
- the semantic head's label order (:func:`d2_semantic_rows`). Detectron2's Panoptic FPN puts the
  merged 'things' class at 0 and stuff class i (ascending category id) at i + 1; its panoptic
  combination skips label 0 as 'things'. Ours has stuff 0..S-1 and the merged thing label S, so
  the predictor's rows are permuted by category. A head with a label per category (Cityscapes
  style) uses Detectron2's contiguous ids in dataset order (Cityscapes train ids), which is our
  ascending-category-id order: kept as is.

Their box classifier puts background last, as ours does; their mask and box heads index thing
classes in ascending category id, as ours do. Inference matches theirs where the weights alone do
not decide: the RPN drops only empty (or non-finite) proposals (``rpn.py``) and masks are
binarised as ``probability >= 0.5`` (``postprocess.py``, ``merge.py``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from typing import Any, Callable, Sequence

import numpy as np
import torch

from panfpn.modeling.pickled_tensors import LOAD_STORAGE, REBUILD_TENSOR, rebuild_tensor, storage_from_bytes

# Detectron2's input convention for its MSRA-initialised model-zoo models, BGR order.
D2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
D2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)


def d2_normalisation_problem(state: dict[str, torch.Tensor]) -> str | None:
    """Why the ``pixel_mean`` / ``pixel_std`` a Detectron2 file records (older Detectron2 saved them
    with the weights) rule out the Caffe BGR conversion, or None (not recorded, or the defaults).

    Detectron2 feeds ``(image in INPUT.FORMAT - PIXEL_MEAN) / PIXEL_STD`` to the first conv; the file
    does not say INPUT.FORMAT, so only the default BGR / Caffe-mean / unit-std setting can be
    converted (a file trained from torchvision weights uses RGB with ImageNet mean and std).
    """
    recorded = {k: state[k].flatten().tolist() for k in ("pixel_mean", "pixel_std") if k in state}
    if not recorded:
        return None
    defaults = {"pixel_mean": D2_PIXEL_MEAN_BGR, "pixel_std": D2_PIXEL_STD_BGR}
    if all(len(v) == 3 and np.allclose(v, defaults[k], atol=1e-3) for k, v in recorded.items()):
        return None
    shown = ", ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in recorded.items())
    return (f"it was trained with {shown} (Detectron2's MODEL.PIXEL_MEAN / PIXEL_STD, saved with the "
            f"weights), not Detectron2's default BGR Caffe mean {list(D2_PIXEL_MEAN_BGR)} with std 1, the "
            "only input convention the Detectron2 import converts (the file does not say INPUT.FORMAT); "
            "with it the model would see other inputs than in Detectron2")


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles written by numpy 1 name the old path.
    for mod in (module, module.replace("numpy.core", "numpy._core")):
        try:
            obj = __import__(mod, fromlist=[name])
            return getattr(obj, name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy arrays, CPU torch tensors and OrderedDicts need; anything
    else is refused."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == REBUILD_TENSOR:
            return rebuild_tensor(self._path)
        if (module, name) == LOAD_STORAGE:
            return lambda data: storage_from_bytes(data, self._path)
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from {self._path}: a weights pickle may only "
                "contain numpy arrays, torch tensors and plain containers (the file may be malicious)")
        if module == "collections":
            return collections.OrderedDict
        return _numpy_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing persistent ids in {self._path}")


def load_d2_pickle(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Detectron2 ``.pkl`` checkpoint -> ``{name: tensor}`` (the ``"model"`` entry).

    Raises ``pickle.UnpicklingError`` for any object other than arrays/tensors/containers and
    ``ValueError`` for a file that is not a ``{name: array or tensor}`` mapping.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        obj = _ArrayOnlyUnpickler(f, path).load()
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and "model" not in state and isinstance(state.get("blobs"), dict):
        # Detectron1 (Caffe2) detection models: blobs and their SGD momenta, as Detectron2 reads them
        state = {k: v for k, v in state["blobs"].items() if not str(k).endswith("_momentum")}
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of arrays (optionally under 'model'), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype != object:
            out[str(name)] = torch.from_numpy(np.array(value))
        elif isinstance(value, torch.Tensor):
            out[str(name)] = value
        else:
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a numeric array")
    return out


def is_d2_state_dict(state: dict[str, Any]) -> bool:
    """Whether the names look like a Detectron2 (generalized R-CNN / panoptic) model."""
    return any(k.startswith(("backbone.bottom_up.", "proposal_generator.", "roi_heads.box_predictor.",
                             "sem_seg_head.")) for k in state)


def _sub(pattern: str, fn: Callable[[re.Match], str]) -> tuple[re.Pattern, Callable[[re.Match], str]]:
    return re.compile(pattern), fn


# Ours -> Detectron2. Index arithmetic accounts for the ReLU/Flatten/Upsample entries that sit
# between the layers of nn.Sequential containers on either side.
_RULES = [
    _sub(r"backbone\.body\.conv1\.weight$", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    _sub(r"backbone\.body\.bn1\.(\w+)$", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    _sub(r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
         lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    _sub(r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)$",
         lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    _sub(r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
         lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    _sub(r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)$",
         lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    _sub(r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(weight|bias)$",
         lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
    _sub(r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(weight|bias)$",
         lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
    _sub(r"rpn\.head\.conv\.0\.0\.(weight|bias)$", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
    _sub(r"rpn\.head\.cls_logits\.(weight|bias)$",
         lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    _sub(r"rpn\.head\.bbox_pred\.(weight|bias)$", lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    # fcs = [Flatten, Linear, ReLU, Linear, ReLU]: Linear n sits at index 2n - 1.
    _sub(r"roi_heads\.box_head\.fcs\.(\d+)\.(weight|bias)$",
         lambda m: f"roi_heads.box_head.fc{(int(m[1]) + 1) // 2}.{m[2]}"),
    _sub(r"roi_heads\.box_head\.(cls_score|bbox_pred)\.(weight|bias)$",
         lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
    # convs = [Conv, ReLU, Conv, ReLU, ...]: conv n sits at index 2(n - 1).
    _sub(r"roi_heads\.mask_head\.convs\.(\d+)\.(weight|bias)$",
         lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) // 2 + 1}.{m[2]}"),
    _sub(r"roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$",
         lambda m: f"roi_heads.mask_head.{m[1]}.{m[2]}"),
    # Detectron2 alternates conv and Upsample entries in each level: stage k sits at index 2k.
    _sub(r"semantic_head\.levels\.(\d)\.(\d+)\.conv\.weight$",
         lambda m: f"sem_seg_head.p{int(m[1]) + 2}.{2 * int(m[2])}.weight"),
    _sub(r"semantic_head\.levels\.(\d)\.(\d+)\.norm\.(weight|bias)$",
         lambda m: f"sem_seg_head.p{int(m[1]) + 2}.{2 * int(m[2])}.norm.{m[3]}"),
    _sub(r"semantic_head\.predictor\.(weight|bias)$", lambda m: f"sem_seg_head.predictor.{m[1]}"),
]

# Detectron2 entries that carry no learned weights of ours (recomputed or set by the loader).
D2_IGNORED = re.compile(r"(^|\.)(pixel_mean|pixel_std|cell_anchors\.\d+)$|num_batches_tracked$")


def ours_to_d2(name: str) -> str | None:
    """Detectron2's name for one of our state-dict keys, or None if it has no counterpart."""
    for pattern, fn in _RULES:
        m = pattern.match(name)
        if m:
            return fn(m)
    return None


# Our keys of the semantic head's 1x1 predictor, whose rows are the semantic labels.
SEM_PREDICTOR_KEYS = ("semantic_head.predictor.weight", "semantic_head.predictor.bias")


def d2_semantic_rows(num_classes: int, thing_sem_labels: Sequence[int], source: str = "") -> tuple[list[int], str]:
    """For each of our semantic labels, the Detectron2 predictor row holding it, and a note saying why.

    ``thing_sem_labels == [num_classes - 1]`` (one merged thing label, last): Detectron2 has it at
    row 0 and stuff k at row k + 1 (its Panoptic FPN merge skips label 0 as 'things', so every such
    checkpoint has this layout; a per-category head whose one thing label is the last is read the
    same way). Otherwise (a label per category): Detectron2's dataset order, the same as ours.
    Raises ``ValueError`` when the thing labels do not fit ``num_classes``.
    """
    things = [int(t) for t in thing_sem_labels]
    if len(set(things)) != len(things) or any(not 0 <= t < num_classes for t in things):
        raise ValueError(
            f"{source}: cannot map Detectron2's semantic head by category: the model's "
            f"thing_sem_labels {things} do not fit its {num_classes} semantic classes")
    if things == [num_classes - 1]:
        rows = list(range(1, num_classes)) + [0]
        return rows, (f"semantic predictor rows permuted from Detectron2's order (things at 0, stuff i "
                      f"at i+1) to ours (stuff 0..{num_classes - 2}, things {num_classes - 1})")
    return list(range(num_classes)), (
        f"semantic predictor rows kept in order: a head with {len(things)} thing labels among "
        f"{num_classes} uses Detectron2's contiguous ids in dataset order (Cityscapes train ids), "
        "which is ours (ascending category id)")


def remap_d2_semantic_predictor(mapped: dict[str, torch.Tensor], num_classes: int,
                                thing_sem_labels: Sequence[int] | None, source: str) -> str | None:
    """Permute the Detectron2 semantic predictor in ``mapped`` (our names) into our label order.

    Returns the note for the load report (None when the file has no semantic predictor). A predictor
    whose row count is not ``num_classes`` is left as it is: it cannot be loaded, and the loader
    reports it as a shape mismatch.
    """
    present = [k for k in SEM_PREDICTOR_KEYS if k in mapped]
    if not present:
        return None
    if thing_sem_labels is None:
        raise ValueError(f"{source}: the model has no thing_sem_labels, so the order of Detectron2's "
                         "semantic classes in it cannot be known")
    rows, note = d2_semantic_rows(num_classes, thing_sem_labels, source)
    if any(mapped[k].shape[0] != num_classes for k in present):
        counts = {k: int(mapped[k].shape[0]) for k in present}
        return f"semantic predictor not remapped: the file has {counts} rows, the model {num_classes}"
    index = torch.tensor(rows)
    for key in present:
        mapped[key] = mapped[key].index_select(0, index)
    return note
