"""Build the packaged models from Python, without hydra: ``panoptic_fpn_r50(num_thing_classes=80, ...)``.

The single source of truth is ``configs/model/<name>.yaml`` (shipped inside the package as
``panfpn/configs``): it is loaded with OmegaConf, its model-group ``defaults`` list applied as hydra
does, the class counts filled in where the yaml reads ``${data.*}`` (derived from metadata with the
given counts, as a dataset config derives them from its categories), and built by ``build_model``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torchvision
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError
from torch import nn

from panfpn.data.metadata import Category, DatasetMetadata
from panfpn.data.resolvers import label_keys

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"

WeightsSource = str | os.PathLike | torchvision.models.WeightsEnum | None


def _model_yaml(name: str) -> Path:
    path = MODEL_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no model config {path} (model configs here: {known})")
    return path


def load_model_yaml(name: str, _chain: tuple[str, ...] = ()) -> DictConfig:
    """``configs/model/<name>.yaml`` with its ``defaults`` list (names in the model group and
    ``_self_``, which is applied last when absent, as in hydra >= 1.1) merged; interpolations kept."""
    if name in _chain:
        raise ValueError(f"model config defaults form a cycle: {' -> '.join((*_chain, name))}")
    path = _model_yaml(name)
    node = OmegaConf.load(path)
    defaults = node.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, node)
        elif isinstance(entry, str) and "/" not in entry and ":" not in entry:
            merged = OmegaConf.merge(merged, load_model_yaml(entry, (*_chain, name)))
        else:
            raise ValueError(f"{path}: defaults entry {entry!r} is not supported here "
                             "(only other model configs by name, and _self_)")
    return merged


def counts_metadata(num_thing_classes: int, num_stuff_classes: int, sem_seg_mode: str = "stuff_plus_thing",
                    thing_sem_labels: Sequence[int] | None = None) -> DatasetMetadata:
    """Metadata with these counts (category ids 1..T+S, named by their id), so the zoo derives a
    model's label spaces as every dataset does: in ``stuff_plus_thing`` the stuff labels come first
    and one merged 'thing' label last; in ``all`` every category has a label and
    ``thing_sem_labels`` (the things' labels) must be given."""
    if not isinstance(num_thing_classes, int) or num_thing_classes < 1:
        raise ValueError(f"num_thing_classes must be an int >= 1, got {num_thing_classes!r}")
    if not isinstance(num_stuff_classes, int) or num_stuff_classes < 0:
        raise ValueError(f"num_stuff_classes must be an int >= 0, got {num_stuff_classes!r}")
    total = num_thing_classes + num_stuff_classes
    if sem_seg_mode == "stuff_plus_thing":
        if thing_sem_labels is not None:
            raise ValueError("thing_sem_labels is fixed in sem_seg_mode='stuff_plus_thing' "
                             f"(the last label, {num_stuff_classes}); got {list(thing_sem_labels)}")
        things = set(range(num_stuff_classes, total))
    elif sem_seg_mode == "all":
        labels = [int(x) for x in thing_sem_labels] if thing_sem_labels is not None else None
        if labels is None or len(set(labels)) != num_thing_classes or not all(0 <= x < total for x in labels):
            raise ValueError(f"sem_seg_mode='all' needs thing_sem_labels: {num_thing_classes} distinct "
                             f"semantic labels in [0, {total}) (the things' category positions); got {thing_sem_labels!r}")
        things = set(labels)
    else:
        raise ValueError(f"sem_seg_mode must be 'stuff_plus_thing' or 'all', got {sem_seg_mode!r}")
    categories = tuple(Category(id=i + 1, name=str(i + 1), isthing=i in things) for i in range(total))
    return DatasetMetadata(categories, sem_seg_mode=sem_seg_mode, name="zoo")  # type: ignore[arg-type]


def data_counts(num_thing_classes: int, num_stuff_classes: int, sem_seg_mode: str = "stuff_plus_thing",
                thing_sem_labels: Sequence[int] | None = None) -> dict[str, Any]:
    """The ``data.*`` keys a model yaml reads, derived from :func:`counts_metadata` by the same
    function as a dataset config's (``panfpn.data.resolvers.label_keys``)."""
    return label_keys(counts_metadata(num_thing_classes, num_stuff_classes, sem_seg_mode, thing_sem_labels))


def model_config(name: str, num_thing_classes: int = 80, num_stuff_classes: int = 53, *,
                 sem_seg_mode: Literal["stuff_plus_thing", "all"] = "stuff_plus_thing",
                 thing_sem_labels: Sequence[int] | None = None, **overrides: Any) -> DictConfig:
    """A root config ``{model, data}`` for ``build_model``: the model yaml ``name`` with nested
    ``overrides`` merged (e.g. ``backbone={"norm": "gn"}``; unknown keys are an error)."""
    model = load_model_yaml(name)
    OmegaConf.set_struct(model, True)
    try:
        model = OmegaConf.merge(model, overrides)
    except ConfigKeyError as e:
        raise ValueError(f"override of model config {name!r} ({_model_yaml(name)}): {e.msg}") from None
    data = data_counts(num_thing_classes, num_stuff_classes, sem_seg_mode, thing_sem_labels)
    return OmegaConf.create({"model": model, "data": data, "weights": None})


def build_named_model(name: str, num_thing_classes: int = 80, num_stuff_classes: int = 53, *,
                      weights: WeightsSource = None, allow_partial: bool = False, **kwargs: Any) -> nn.Module:
    """The model of ``configs/model/<name>.yaml`` built as ``build_model`` builds it, then
    ``weights`` loaded by :func:`panfpn.modeling.weights.load_weights` (strict unless ``allow_partial``)."""
    from panfpn.modeling.build import build_model, instantiate_model
    from panfpn.modeling.weights import WeightsError, load_weights

    cfg = model_config(name, num_thing_classes, num_stuff_classes, **kwargs)
    if weights is None:
        return build_model(cfg)  # warns like the tools when frozen BN gets no weights
    model = instantiate_model(cfg)
    try:
        load_weights(model, weights, allow_partial=allow_partial)
    except WeightsError as err:
        raise WeightsError(f"{err} [from Python: allow_partial=True is weights_partial=true; a tools/train.py "
                           "checkpoint records its own model, which panfpn.engine.inference_model."
                           "build_inference_model(OmegaConf.create({'weights': path}), overrides=[]) builds]") from None
    return model


def panoptic_fpn_r50(num_thing_classes: int = 80, num_stuff_classes: int = 53, *,
                     weights: WeightsSource = None, **kwargs: Any) -> nn.Module:
    """Panoptic FPN R50-FPN (``configs/model/panoptic_fpn_r50.yaml``); COCO class counts by default."""
    return build_named_model("panoptic_fpn_r50", num_thing_classes, num_stuff_classes, weights=weights, **kwargs)


def panoptic_fpn_r101(num_thing_classes: int = 80, num_stuff_classes: int = 53, *,
                      weights: WeightsSource = None, **kwargs: Any) -> nn.Module:
    """Panoptic FPN R101-FPN (``configs/model/panoptic_fpn_r101.yaml``); COCO class counts by default."""
    return build_named_model("panoptic_fpn_r101", num_thing_classes, num_stuff_classes, weights=weights, **kwargs)


def panoptic_fpn_small(num_thing_classes: int = 80, num_stuff_classes: int = 53, *,
                       weights: WeightsSource = None, **kwargs: Any) -> nn.Module:
    """The CPU-fast R18 model of the synthetic demo and tests (``configs/model/panoptic_fpn_small.yaml``)."""
    return build_named_model("panoptic_fpn_small", num_thing_classes, num_stuff_classes, weights=weights, **kwargs)
