"""One entry point for every kind of weights: :func:`load_weights`.

Accepted sources:
  - a torchvision ImageNet weights enum, or its name (``"ResNet50_Weights.IMAGENET1K_V1"``):
    fetched by torchvision (cached under ``$TORCH_HOME``) and loaded into the ResNet body;
  - a local torchvision ResNet state dict (``.pth``): loaded into the ResNet body;
  - a local torchvision classification state dict of the configured backbone (any
    :class:`~panfpn.modeling.backbone_tv.TorchvisionFPN`): loaded into its body, the classifier
    head it does not have (``backbone.unused_source_keys``) dropped;
  - our own checkpoints (``.pth`` / ``.pt``, a bare state dict or a dict with a ``"model"`` key);
  - Detectron2 Panoptic FPN checkpoints: model-zoo ``.pkl`` (read without general unpickling) or
    ``.pth``; converted by name, with their BGR / Caffe-mean and ``stride_in_1x1`` conventions and
    the semantic head's rows permuted into our label order;
  - official Mask2Former model-zoo checkpoints (``.pkl``), by the model's ``convert_official_state``;
  - Detectron2's ImageNet ResNet initialisation files (:mod:`panfpn.modeling.d2_imagenet`): the MSRA
    ``R-50.pkl`` / ``R-101.pkl`` in Caffe2 names (stride in the 1x1 conv, BGR and Caffe mean set as
    for Detectron2 checkpoints), or a torchvision ResNet converted by its tool (torchvision's layout);
  - ImageNet classification Swin files as the official Mask2Former configs start from
    (``swin_tiny_patch4_window7_224.pkl`` ...: plain pickles of torch tensors, or the Swin release
    ``.pth``): loaded into the Swin body (``official_swin.imagenet_swin_to_ours``).
Tensor files are always read with ``torch.load(weights_only=True)``; a state dict saved through
DistributedDataParallel (every key under ``module.``) is read without the prefix. Settings without a
tensor follow the file: ``stride_in_1x1`` is set true for Detectron2 and MSRA weights (and for our
checkpoints that record it), false for torchvision ones. Detectron2 files recording another input
normalisation are refused with what they are.

Loading is strict: every model tensor in scope (the whole model; the ResNet body for ImageNet
weights) must be loaded and every file tensor used, else :class:`WeightsError`. With
``allow_partial=True`` (fine-tuning) what does not fit is skipped and listed. Weights that match
nothing are always an error, and a failed load leaves the model as it was.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
import yaml
from torch import nn

from panfpn.modeling.panoptic_fpn.detectron2_import import (
    D2_IGNORED, D2_PIXEL_MEAN_BGR, D2_PIXEL_STD_BGR, SEM_PREDICTOR_KEYS, d2_normalisation_problem,
    is_d2_state_dict, load_d2_pickle, ours_to_d2, remap_d2_semantic_predictor,
)
from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.d2_imagenet import (
    CONVERTED_TORCHVISION, MSRA, ImageNetFileError, converted_torchvision_names, imagenet_kind, msra_to_torchvision,
)
from panfpn.modeling.panoptic_fpn.model import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from panfpn.modeling.pickled_tensors import weights_only_reason

logger = logging.getLogger("panfpn")
_ENUM_NAME = re.compile(r"^\w+_Weights\.\w+$")
_RESNET_KEY = re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\.|fc\.(weight|bias))")
ACCEPTED_FORMATS = ("a panfpn checkpoint (.pth/.pt)", "a Detectron2 checkpoint (.pkl or .pth)",
                    "a torchvision ResNet state dict (.pth)",
                    "Detectron2's ImageNet ResNet R-50.pkl / R-101.pkl (MSRA, or torchvision converted by its tool)",
                    "a torchvision classification state dict of the configured backbone (.pth)",
                    "a torchvision weights name such as ResNet50_Weights.IMAGENET1K_V1",
                    "an ImageNet Swin file as the official Mask2Former configs start from "
                    "(swin_*.pkl, or the Swin release .pth)")
TORCH_SUFFIXES = (".pth", ".pt")
# Set from conventions (Detectron2's Caffe mean), not read from the file: they do not count as a match.
_NORMALISATION = ("pixel_mean", "pixel_std")
IMAGENET_SWIN = "official imagenet swin"
BACKBONE_ONLY_FORMATS = ("torchvision resnet", "torchvision imagenet", IMAGENET_SWIN)


class WeightsError(ValueError):
    """Weights that cannot be read, or that do not fit the model (see :func:`load_weights`)."""


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

    @property
    def matched(self) -> list[str]:
        """The loaded keys that came from the file (not the normalisation set by convention)."""
        return [k for k in self.loaded if k not in _NORMALISATION]

    def problems(self, limit: int = 5) -> str:
        """One line: how many tensors did not fit, by kind, with the first keys of each."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} model tensor(s) not in the file ({_short(self.missing, limit)})")
        if self.shape_mismatch:
            first = [f"{k} model {list(a)} vs file {list(b)}" for k, a, b in self.shape_mismatch]
            parts.append(f"{len(first)} with another shape ({_short(first, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} file tensor(s) the model does not have "
                         f"({_short(self.unexpected, limit)})")
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [f"weights {self.source} ({self.format}): {len(self.loaded)} tensors loaded"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  NOT in the file ({len(self.missing)}): {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  in the file but not mapped ({len(self.unexpected)}): {_short(self.unexpected)}")
        for key, ours, theirs in self.shape_mismatch:
            lines.append(f"  shape mismatch: {key} model {list(ours)} vs file {list(theirs)}")
        return "\n".join(lines)


def _short(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def load_weights(model: nn.Module, source: str | os.PathLike | torchvision.models.WeightsEnum, *,
                 allow_partial: bool = False,
                 torchvision_state: Mapping[str, torch.Tensor] | None = None) -> LoadReport:
    """Load ``source`` into ``model`` (a :class:`~panfpn.modeling.panoptic_fpn.PanopticFPN`) in place.

    Strict unless ``allow_partial``: a model tensor in scope left unloaded, a shape mismatch or a
    file tensor the model lacks raises :class:`WeightsError` naming how many and the first keys.
    With ``allow_partial`` those are skipped and listed in the returned (and logged) report. Zero
    tensors matched is always an error. On any error the model is left exactly as it was.
    Raises ``FileNotFoundError`` for a missing file, ``WeightsError`` for an unreadable one or an
    unknown format, ``pickle.UnpicklingError`` for a pickle holding anything but arrays or tensors.
    ``torchvision_state``: for a torchvision weights name, the state dict to load instead of
    fetching the file (the sweep check's stand-in: the architecture's own keys and shapes).
    """
    saved = _snapshot(model)
    try:
        report = _dispatch(model, source, torchvision_state)
        _check(report, allow_partial)
    except BaseException:
        _restore(model, saved)
        raise
    return report


def _dispatch(model: nn.Module, source: Any, torchvision_state: Mapping[str, torch.Tensor] | None) -> LoadReport:
    if isinstance(source, torchvision.models.WeightsEnum) or is_weights_name(source):
        return _load_torchvision_enum(model, source, torchvision_state)
    path = check_weights_path(source)
    if path.suffix == ".pkl":
        pickled = _read_d2_pickle(path)
        if _is_imagenet_swin(pickled):
            return _load_imagenet_swin(model, pickled, str(path))
        kind = imagenet_kind(pickled)
        if kind:
            return _load_d2_imagenet(model, pickled, str(path), kind)
        return _load_d2(model, pickled, str(path))
    obj = read_torch_file(path)
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (or a dict with a 'model' state dict) of "
                           f"tensors, got {type(state).__name__}; {_formats()}")
    if not state:
        raise WeightsError(f"{path} holds no tensors: it matches nothing in the model")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    if _is_imagenet_swin(state):
        return _load_imagenet_swin(model, state, str(path))
    if is_d2_state_dict(state):
        return _load_d2(model, state, str(path))
    if all(_RESNET_KEY.match(k) for k in state):
        return _load_into(model, {f"backbone.body.{k}": v for k, v in state.items()
                                  if not k.startswith("fc.")},
                          _torchvision_layout(model, LoadReport(str(path), "torchvision resnet")),
                          scope="backbone.body.")
    if _is_torchvision_body_state(model, state):
        return _load_into(model, _map_torchvision_body(model, state),
                          _torchvision_layout(model, LoadReport(str(path), "torchvision imagenet")),
                          scope="backbone.body.")
    report = _recorded_layout(model, obj, LoadReport(str(path), "panfpn"))
    return _load_into(model, dict(state), report, scope="")


def _recorded_layout(model: nn.Module, obj: Any, report: LoadReport) -> LoadReport:
    """Move the ResNet stride to the 1x1 conv when a panfpn checkpoint's model record says its
    weights had it there (``backbone.stride_in_1x1: true``, after a Detectron2 initialisation): no
    tensor tells. A recorded false is not applied: checkpoints written before the record took the
    built model's value recorded false even after a Detectron2 initialisation."""
    backbone = getattr(model, "backbone", None)
    text = obj.get("model_config") if isinstance(obj, dict) else None
    if not isinstance(text, str) or getattr(backbone, "depth", 0) < 50:
        return report
    try:
        node = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WeightsError(f"{report.source}: its model record (model_config) is not YAML: {err}") from err
    node = node.get("backbone") if isinstance(node, dict) else None
    recorded = node.get("stride_in_1x1") if isinstance(node, dict) else None
    if recorded is True:
        _move_stride(backbone, True, report, "as the checkpoint records")
    return report


def _is_imagenet_swin(state: dict[str, Any]) -> bool:
    """The classification Swin's names (official, without ``backbone.``): patch embedding and stages."""
    return "patch_embed.proj.weight" in state and any(k.startswith("layers.") for k in state)


def _load_imagenet_swin(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Strict within ``backbone.body.``: the rest of the model (output norms, heads) is left as initialised."""
    from panfpn.modeling.mask2former.official_swin import imagenet_swin_to_ours  # it imports this module

    report = LoadReport(source, IMAGENET_SWIN)
    return _load_into(model, imagenet_swin_to_ours(model, state, report), report, scope="backbone.body.")


# --- torchvision classification state dicts for any backbone (TorchvisionFPN) ---------------------
def _unused_source_keys(model: nn.Module) -> frozenset[str]:
    """Keys of the backbone's full torchvision model that its feature extractor dropped (the
    classifier head); ResNetFPN has none listed, its ``fc.*`` is dropped by name."""
    return frozenset(getattr(getattr(model, "backbone", None), "unused_source_keys", ()))


def _is_torchvision_body_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """A torchvision classification state dict: no key is under one of the model's own top-level
    names (``backbone.``, ``rpn.`` ...) and some key names a ``backbone.body.`` entry. Keys that do
    not fit (another variant of the family) are then reported by the strict load, not guessed at."""
    ours = model.state_dict()
    top = {k.split(".")[0] for k in ours}
    return (not any(k.split(".")[0] in top for k in state)
            and any(f"backbone.body.{k}" in ours for k in state))


def _map_torchvision_body(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under ``backbone.body.``, without the classifier head the backbone does not have."""
    unused = _unused_source_keys(model) or frozenset(k for k in state if k.startswith("fc."))
    return {f"backbone.body.{k}": v for k, v in state.items() if k not in unused}


def _formats() -> str:
    return "weights= accepts " + "; ".join(ACCEPTED_FORMATS)


def is_weights_name(source: Any) -> bool:
    """Whether ``source`` is read as a torchvision weights name (``ResNet50_Weights.IMAGENET1K_V1``,
    not an existing file of that name) rather than a file path."""
    return isinstance(source, str) and bool(_ENUM_NAME.match(source)) and not os.path.exists(source)


def check_weights_path(source: str | os.PathLike) -> Path:
    """The weights file as a Path; errors name the path and the accepted formats."""
    path = Path(source)
    if path.is_dir():
        found = sorted(path.glob("model_*.pth"), key=lambda p: (p.name == "model_final.pth", p.name))
        hint = f" (did you mean {found[-1]}?)" if found else ""
        raise WeightsError(f"weights={path} is a directory, not a weights file{hint}; {_formats()}")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (and is not a torchvision weights name "
                                "like 'ResNet50_Weights.IMAGENET1K_V1')")
    if path.suffix not in (".pkl", *TORCH_SUFFIXES):
        raise WeightsError(f"weights={path}: unknown format {path.suffix or '(no suffix)'!r}; {_formats()}")
    return path


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, told by its first bytes (empty, text, other
    binary data); None when it may be one (a zip archive, or a pickle: torch's legacy format)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # zip, or pickle protocol >= 2
        return None
    kind = "text" if _is_text(head) else "binary data"
    return f"it is {kind} starting with {head[:16]!r}, not a zip archive written by torch.save"


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (a character cut at the end allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[:err.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def load_error_reason(path: str | os.PathLike, err: BaseException) -> str:
    """What is wrong with ``path``, on one line, from the error ``torch.load`` raised on it (torch's
    weights-only refusal hides it in a paragraph of advice)."""
    text = str(err)
    # torch < 2.6 marks the refusal "WeightsUnpickler error:"; later versions open the message
    # with "Weights only load failed" and give the reason in a paragraph of its own.
    if "WeightsUnpickler error:" in text or text.lstrip().startswith("Weights only load failed"):
        reason = f"UnpicklingError: the weights-only unpickler refused it: {weights_only_reason(err)}"
    else:
        first = text.strip().splitlines()[0] if text.strip() else ""
        reason = f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__
    if not _is_zip(path):
        reason += "; it is a plain pickle, not a zip archive written by torch.save"
    return reason


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on CPU, memory-mapped when possible; an unreadable file
    (empty, text, truncated, not a torch file) raises :class:`WeightsError` naming it, what is
    wrong and the accepted formats."""
    problem = torch_file_problem(path)
    if problem is not None:
        raise WeightsError(f"cannot read {path} as a torch weights file: {problem}; {_formats()}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) torch files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # a damaged file fails anywhere in torch's reader or the unpickler
        raise WeightsError(f"cannot read {path} as a torch weights file ({load_error_reason(path, err)}); "
                           f"{_formats()}") from err


def _read_d2_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_d2_pickle(path)
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing"):  # a pickle that tries to run code: say so as it is
            raise
        raise WeightsError(f"cannot read {path} as a Detectron2 .pkl ({err}){_zip_hint(path)}; "
                           f"{_formats()}") from err
    except (MemoryError, OSError):
        raise  # OSError names the file itself
    except Exception as err:  # a damaged pickle fails anywhere in the unpickler
        raise WeightsError(f"cannot read {path} as a Detectron2 .pkl ({type(err).__name__}: {err})"
                           f"{_zip_hint(path)}; {_formats()}") from err


def _is_zip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _zip_hint(path: Path) -> str:
    return ": it is a zip archive, as torch.save writes (a .pth file named .pkl?)" if _is_zip(path) else ""


def _check(report: LoadReport, allow_partial: bool) -> None:
    """Log the report; raise :class:`WeightsError` when nothing matched, or (strict) when anything
    did not fit."""
    if report.complete:
        logger.info("%s", report)
    elif not report.matched or not allow_partial:
        logger.warning("%s\n  -> refused: nothing loaded, the model is left as it was", report)
    else:
        logger.warning("%s\n  -> partial load (weights_partial=true): the %d model tensors listed above are "
                       "left as initialised", report, len(report.missing) + len(report.shape_mismatch))
    if not report.matched:
        raise WeightsError(f"weights {report.source} ({report.format}) match nothing in the model: no "
                           f"tensor of the file fits it; {report.problems() or 'the file holds no tensors'}")
    if report.complete:
        return
    if not allow_partial:
        raise WeightsError(
            f"weights {report.source} ({report.format}) do not fit the model: {report.problems()}. "
            "If the config's model is not the one these weights were trained with, fix the model "
            "config; to fine-tune (e.g. other class counts) set weights_partial=true, which skips "
            "and lists these tensors")


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Tensors and plain attributes (e.g. conv strides, ``stride_in_1x1``) to undo a failed load."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = (bool, int, float, str, tuple, type(None))
    attrs = {name: {k: v for k, v in vars(m).items() if isinstance(v, plain)}
             for name, m in model.named_modules()}
    return tensors, attrs


def _restore(model: nn.Module, saved: tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]) -> None:
    tensors, attrs = saved
    modules = dict(model.named_modules())
    for name, values in attrs.items():
        vars(modules[name]).update(values)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(tensors[key])


def _download_failed(weights: Any, err: Exception) -> str:
    """What a failed fetch of torchvision weights says: the name, the URL, the error, where torch
    looks for the file and how to give a local one."""
    name = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return (f"torchvision weights {weights} could not be downloaded from {weights.url} ({type(err).__name__}: "
            f"{err}); torch looks for the file at {cached} ($TORCH_HOME): without internet, download it "
            f"elsewhere and put it there, or pass the local file as weights=/path/to/{name}")


def _load_torchvision_enum(model: nn.Module, source: Any, state: Mapping[str, torch.Tensor] | None = None) -> LoadReport:
    weights = torchvision.models.get_weight(source) if isinstance(source, str) else source
    if state is None:  # not given a stand-in: fetch the file
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError)
            raise WeightsError(_download_failed(weights, err)) from None  # one message, not urllib's chain
    mapped = _map_torchvision_body(model, state)
    report = _torchvision_layout(model, LoadReport(str(weights), "torchvision imagenet"))
    return _load_into(model, mapped, report, scope="backbone.body.")


def _torchvision_layout(model: nn.Module, report: LoadReport) -> LoadReport:
    """torchvision's bottlenecks downsample in the 3x3 conv: a backbone configured with
    ``stride_in_1x1`` (Detectron2's default) is switched back, as the Detectron2 import switches it on."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "stride_in_1x1"):
        _move_stride(backbone, False, report, "torchvision bottleneck layout")
    return report


def _move_stride(backbone: nn.Module, in_1x1: bool, report: LoadReport, why: str) -> None:
    """Put the ResNet bottlenecks' stride where the weights had it (no tensor tells), with a note."""
    if bool(backbone.stride_in_1x1) != in_1x1:
        backbone.stride_in_1x1 = in_1x1
        report.notes.append(f"backbone switched to stride_in_1x1={in_1x1} ({why})")


def _other_architecture(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """Which model a Detectron2-layout file that matched nothing is for, when it is the other one."""
    official = hasattr(model, "convert_official_state")
    if not official and any(k.startswith(("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.query_"))
                            for k in state):
        return "an official Mask2Former checkpoint: build its model with model=mask2former_r50 (or mask2former_swin_*)"
    if official and any(k.startswith(("backbone.bottom_up.", "roi_heads.box_predictor.")) for k in state):
        return "a Detectron2 Panoptic FPN checkpoint: build its model with model=panoptic_fpn_r50 (or panoptic_fpn_r101)"
    return None


def _load_d2(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    report = _load_d2_layout(model, state, source)
    other = None if report.matched else _other_architecture(state, model)
    if other:
        raise WeightsError(f"weights {source} match nothing in the {type(model).__name__} model: they are {other}")
    return report


def _load_d2_layout(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    convert = getattr(model, "convert_official_state", None)
    if convert is not None:  # a model with its own official layout (Mask2Former's model zoo)
        report = LoadReport(source, f"official {type(model).__name__}")
        return _load_into(model, convert(state, report), report, scope="", ignore_missing=("num_batches_tracked",))
    report = LoadReport(source, "detectron2")
    problem = d2_normalisation_problem(state)
    if problem and (other := _other_architecture(state, model)):  # the other model's file: say that, not its mean
        raise WeightsError(f"weights {source} match nothing in the {type(model).__name__} model: they are {other}")
    if problem:
        raise WeightsError(f"weights {source} (detectron2) cannot be converted: {problem}")
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
    _set_normalisation(model, mapped, report, D2_PIXEL_MEAN_BGR[::-1], D2_PIXEL_STD_BGR[::-1],
                       "Detectron2's Caffe values in RGB order")
    sem_key = SEM_PREDICTOR_KEYS[0]
    if sem_key in ours:
        note = remap_d2_semantic_predictor(mapped, ours[sem_key].shape[0],
                                           getattr(model, "thing_sem_labels", None), source)
        report.notes += [note] if note else []
    backbone = getattr(model, "backbone", None)
    if backbone is not None and getattr(backbone, "depth", 0) >= 50:
        _move_stride(backbone, True, report, "MSRA bottleneck layout")
    return _load_into(model, mapped, report, scope="", ignore_missing=("num_batches_tracked",))


def _set_normalisation(model: nn.Module, mapped: dict[str, torch.Tensor], report: LoadReport,
                       mean: tuple[float, ...], std: tuple[float, ...], what: str) -> None:
    """Add the input mean / std the weights were trained with to ``mapped`` (with a note), when the
    model normalises its input."""
    if hasattr(model, "pixel_mean"):
        mapped["pixel_mean"] = torch.tensor(mean).view(3, 1, 1)
        mapped["pixel_std"] = torch.tensor(std).view(3, 1, 1)
        report.notes.append(f"pixel mean/std set to {what} {tuple(mean)} / {tuple(std)}")


def _load_d2_imagenet(model: nn.Module, state: dict[str, torch.Tensor], source: str, kind: str) -> LoadReport:
    """Detectron2's ImageNet ResNet files into the ResNet body, with the settings its configs give them:
    MSRA (Caffe2 names): stride in the 1x1 conv, BGR input (first conv flipped for our RGB) minus
    the Caffe mean, std 1; converted torchvision: stride in the 3x3 conv, RGB, ImageNet mean / std."""
    backbone = getattr(model, "backbone", None)
    built = getattr(backbone, "depth", 0)
    try:
        if kind == MSRA:
            body, depth = msra_to_torchvision(state, source, built)
        else:
            body, depth = converted_torchvision_names(state, source), 0
    except ImageNetFileError as err:
        raise WeightsError(f"weights {err}") from err
    if depth and built and depth != built:
        raise WeightsError(f"weights {source} ({kind}) are an ImageNet ResNet-{depth} (blocks per stage in "
                           f"the blob names) but the model's backbone is a ResNet-{built}: set "
                           f"model.backbone.depth={depth}")
    report = LoadReport(source, kind)
    if kind == CONVERTED_TORCHVISION:
        mapped = _map_torchvision_body(model, body)
        _torchvision_layout(model, report)
        _set_normalisation(model, mapped, report, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,
                           "torchvision's ImageNet values (RGB), as convert-torchvision-to-d2.py says")
        return _load_into(model, mapped, report, scope="backbone.body.")
    if not isinstance(backbone, ResNetFPN):
        raise WeightsError(f"weights {source} ({kind}) need the stride in the bottleneck's 1x1 conv, which only "
                           f"the Panoptic FPN ResNet backbone can set, not {type(backbone).__name__}; give "
                           "ImageNetPretrained/torchvision/R-50.pkl or ResNet50_Weights.IMAGENET1K_V1 instead")
    _move_stride(backbone, True, report, "MSRA bottleneck layout")
    mapped = {f"backbone.body.{k}": v for k, v in body.items()}
    mapped["backbone.body.conv1.weight"] = mapped["backbone.body.conv1.weight"].flip(1)
    report.notes.append("first conv flipped from BGR to RGB input channels; FrozenBN running mean 0 / var 1 "
                        "under the file's scale / bias, as Detectron2 loads them")
    _set_normalisation(model, mapped, report, D2_PIXEL_MEAN_BGR[::-1], D2_PIXEL_STD_BGR[::-1],
                       "the Caffe values the MSRA weights were trained with, in RGB order")
    return _load_into(model, mapped, report, scope="backbone.body.")


def _load_into(model: nn.Module, mapped: dict[str, torch.Tensor], report: LoadReport, *, scope: str,
               ignore_missing: tuple[str, ...] = ()) -> LoadReport:
    """Copy the entries of ``mapped`` whose name and shape fit; fill in the report (checked and
    logged by :func:`load_weights`, which undoes the copy when it refuses the load)."""
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
    # BN bookkeeping counters are not weights: files often lack them (torchvision's ImageNet files)
    ignore = (*ignore_missing, "num_batches_tracked")
    report.missing = sorted(k for k in ours if k.startswith(scope) and k not in usable
                            and k not in mismatched and not k.endswith(ignore))
    return report
