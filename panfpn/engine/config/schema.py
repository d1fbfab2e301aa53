"""The declaration of every engine config key: one line each, with its type, its check and its doc.

Each section of the composed config (the root, ``train``, ``eval``, ``solver``, ``data``,
``predict``, ``merge``, ``export``) is a frozen dataclass registered by :func:`section`; each key is
a field declared with :func:`option`::

    log_period: int = option(integer(1), "iterations between logged scalars")

From these declarations come the checks of :func:`panfpn.engine.config.validate_config` (unknown
keys with a did-you-mean, missing keys, types, ranges, choices), the jobs' options objects
(:class:`PredictOptions` and :class:`ExportOptions` *are* the ``predict`` / ``export`` sections,
filled by ``from_config``) and docs/config.md (``python -m panfpn.engine.config.doc``).

The defaults are not here: they live in configs/config.yaml (and the data / solver groups), the
one place a hydra user reads and overrides them; tests/engine/test_config_schema.py fails when a
yaml key has no declaration or a declaration no yaml key. docs/config.md says why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig

from panfpn.engine.config.checks import (
    Check, boolean, boolean_or_auto, integer, number, one_of, paths, preset_or, rule_or_regex, string,
)
from panfpn.data.image_ids import IMAGE_ID_RULES  # predict.image_id's named rules; else a regex
from panfpn.data.size_limits import MAX_SIZE, MIN_SIZE, SIZE_DIVISIBILITY
from panfpn.utils.device_names import DEVICE_NAMES, is_device_name

T = TypeVar("T")


def _lr_multipliers(value: Any) -> bool:
    """solver.lr_multipliers: parameter-name prefix -> a finite factor > 0."""
    return isinstance(value, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                           and 0 < x < float("inf") for x in value.values())


def _weight_decay_by_name(value: Any) -> bool:
    """solver.weight_decay_by_name: non-empty parameter-name substring -> a finite decay >= 0 (or null)."""
    return value is None or isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(x, (int, float)) and not isinstance(x, bool)
        and 0 <= x < float("inf") for k, x in value.items())


def _evaluator_list(value: Any) -> bool:
    """eval.evaluators: a list of non-empty names or mappings with a ``_target_``."""
    return isinstance(value, list) and all((isinstance(x, str) and x) or (isinstance(x, dict) and "_target_" in x)
                                           for x in value)

# section name ("" = the root) -> its dataclass, in declaration order (docs/config.md follows it)
SECTIONS: dict[str, type] = {}
# where a section's values come from when not from configs/config.yaml: its config group
GROUP_SECTIONS = {"data": "configs/data/", "solver": "configs/solver/"}


@dataclasses.dataclass(frozen=True)
class Option:
    """What :func:`option` records on a field: the check (None: any value, checked by whatever
    the key is passed to), the one-line doc, and whether the key may be absent."""

    check: Check | None
    doc: str
    optional: bool = False


def option(check: Check | None, doc: str, *, optional: bool = False) -> Any:
    """Declare one key: ``check`` (None: checked by its consumer, e.g. a ``_target_`` node's
    constructor) and ``doc`` (docs/config.md). No default: configs/config.yaml holds it."""
    optional = optional or (check is not None and check.optional)
    return dataclasses.field(metadata={"option": Option(check, doc, optional)})


def section(name: str, *, required: bool = True) -> Callable[[type[T]], type[T]]:
    """Register a class as the frozen dataclass of config section ``name`` (``""``: the root).
    ``required``: a composed config must have it (else train-only configs may omit it)."""
    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.section, cls.required = name, required  # type: ignore[attr-defined]
        SECTIONS[name] = cls
        return cls
    return wrap


class FromConfig:
    """``from_config(cfg)``: the section read from a composed config, checked as
    :func:`panfpn.engine.config.section_values` checks it (unknown keys, types, ranges)."""

    @classmethod
    def from_config(cls: type[T], cfg: DictConfig) -> T:
        from panfpn.engine.config import section_values

        return cls(**section_values(cfg, cls.section))  # type: ignore[attr-defined]


def options_of(name: str) -> dict[str, Option]:
    """The declared keys of section ``name`` with their :class:`Option`, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(SECTIONS[name])}


def types_of(name: str) -> dict[str, str]:
    """The declared type of each key of section ``name``, as written (``int | None``)."""
    return {f.name: str(f.type) for f in dataclasses.fields(SECTIONS[name])}


def known_keys(name: str) -> set[str]:
    """Every key section ``name`` may hold (the root: its keys and the sections' names)."""
    keys = set(options_of(name))
    return keys | {s for s in SECTIONS if s} if name == "" else keys


@section("")
class RunOptions:
    """Run-wide keys (the root of configs/config.yaml)."""

    seed: int = option(integer(), "random seed (Python, NumPy, torch, the training sampler)")
    device: str = option(Check(DEVICE_NAMES, is_device_name), "cuda: the LOCAL_RANK GPU under torchrun")
    resume: bool = option(boolean(), "continue from the last checkpoint in output_dir")
    weights: str | None = option(string(nullable=True), "a file (ours / Detectron2 .pkl/.pth / torchvision "
                                 "resnet) or a torchvision weights enum name")
    weights_partial: bool = option(boolean(), "load what fits, skip and list tensors of other shapes "
                                   "(fine-tuning with other class counts)")
    model_from_checkpoint: bool = option(boolean(), "eval/predict/export: model, labels and test transform "
                                         "from a panfpn checkpoint's record (command-line model.* still wins)")
    output_dir: str = option(None, "the run dir (hydra's); the tools write everything under it")
    model: Any = option(None, "the model group (configs/model/): a _target_ tree, checked by its constructors")
    experiment: Any = option(None, "the experiment group's name (its presets are global)", optional=True)


@section("train")
class TrainOptions:
    """tools/train.py: the training loop."""

    log_period: int = option(integer(1), "iterations between logged scalars")
    checkpoint_period: int = option(integer(1), "iterations between checkpoints")
    keep_checkpoints: int | None = option(integer(1, nullable=True), "keep only the newest N periodic "
                                          "checkpoints (null: all); model_final stays")
    eval_period: int = option(integer(-1), "iterations between evaluations; 0: only at the end; -1: never")
    amp: bool = option(boolean(), "mixed precision")
    amp_dtype: str = option(one_of("bfloat16", "float16"), "float16 uses a grad scaler")
    clip_grad_norm: float | None = option(number(above=0, nullable=True), "clip the gradient norm (e.g. 1.0)")
    on_nonfinite: str = option(one_of("raise", "skip"), "what a NaN/inf loss does")
    max_consecutive_nonfinite: int = option(integer(1), "skip mode: this many non-finite steps in a row "
                                            "stop the run (error)")
    max_skipped_fraction: float | None = option(number(at_least=0, at_most=1, nullable=True), "skip mode: "
                                                "more skipped steps than this share of solver.max_iter stop "
                                                "the run before model_final is written (null: no limit)")
    num_vis_images: int = option(integer(0), "validation overlays sent to TensorBoard at each evaluation")
    progress_bar: bool | str = option(boolean_or_auto(), "a tqdm bar on the main rank; auto: only on a "
                                      "terminal (a metrics line every log_period either way)")
    objective: str | None = option(string(nullable=True), "the eval result tools/train.py returns for "
                                   "hydra's sweepers, e.g. pq/All, miou, loss/total (null: none)")
    objective_direction: str = option(one_of("maximize", "minimize"), "the objective's direction (for the "
                                      "sweeper's config)")


@section("eval")
class EvalOptions:
    """tools/eval.py and training's evaluations."""

    max_images: int | None = option(integer(1, nullable=True), "evaluate on the first N validation images only")
    save_predictions: bool = option(boolean(), "<run dir>/predictions/panoptic_pred.json + "
                                    "panoptic_pred/<image id>.png (with thing scores); with cityscapes_ap "
                                    "also cityscapes_instances/ (the official instance-level files)")
    save_semantic: bool = option(boolean(), "<run dir>/semantic/<image id>.png: semantic labels as "
                                 "dataset category ids")
    compute_ap: bool = option(boolean(), "COCO box and mask AP beside PQ and mIoU")
    batch_size: int = option(integer(1), "images per forward pass")
    save_overlays: int = option(integer(0), "tools/eval.py: ground truth | prediction overlays of the first N images")
    report: bool = option(boolean(), "tools/eval.py: report.html beside eval_results.json")
    progress_bar: bool | str = option(boolean_or_auto(), "tools/eval.py: auto (on a terminal only) | true | "
                                      "false (then a log line a minute)")
    allow_renamed_categories: bool = option(boolean(), "evaluate a dataset whose category ids have other "
                                            "names than the checkpoint's (logged; the dataset's names are shown)")
    report_browse: bool = option(boolean(), "tools/eval.py: every image's overlay in report_images/, browsable "
                                 "in report.html (paged, sorted by per-image PQ)")
    evaluators: list = option(Check("a list of evaluator names (e.g. pq_by_area) or {_target_: module.Class} entries",
                                    _evaluator_list), "metrics beyond PQ / mIoU / AP: built-in names (pq_by_area, "
                              "cityscapes_ap, cityscapes_sem_seg) or {_target_: module.Class} entries (docs/evaluation.md#evaluators)")


@section("solver")
class SolverOptions:
    """The solver group (configs/solver/): optimizer, schedule, batch, iterations."""

    optimizer: Any = option(None, "a partial _target_ of a torch optimizer (instantiated with the parameters)")
    base_lr: float = option(number(above=0), "learning rate at the global batch ims_per_batch")
    ims_per_batch: int = option(integer(1), "the global batch base_lr is tuned for (lr scales linearly)")
    weight_decay: float = option(number(at_least=0), "weight decay")
    weight_decay_norm: float | None = option(number(at_least=0, nullable=True), "for norm layers (null: weight_decay)")
    weight_decay_bias: float | None = option(number(at_least=0, nullable=True), "for biases (null: weight_decay)")
    max_iter: int = option(integer(1), "training iterations")
    schedule: Any = option(None, "a _target_ learning-rate schedule (panfpn.engine.training.solver)")
    weight_decay_embed: float | None = option(number(at_least=0, nullable=True), "for embedding parameters "
                                              "(Mask2Former's queries; null: weight_decay)", optional=True)
    lr_multipliers: dict | None = option(Check("a mapping of parameter-name prefixes to lr factors > 0, e.g. "
                                               "{backbone: 0.1}", _lr_multipliers), "lr factor by the "
                                         "longest matching parameter-name prefix (Mask2Former: backbone 0.1)",
                                         optional=True)
    weight_decay_by_name: dict | None = option(Check("a mapping of parameter-name substrings to weight decays >= 0, "
                                                     "e.g. {relative_position_bias_table: 0.0}", _weight_decay_by_name),
                                               "weight decay of parameters whose full name contains a key (the "
                                               "longest wins; not norms / embeddings; Mask2Former: 0 on Swin's "
                                               "position tables)", optional=True)


@section("data")
class DataOptions:
    """The data group (configs/data/): datasets, transforms, loaders."""

    name: str = option(None, "the dataset's name")
    root: str | None = option(None, "data root (null: from the dataset's environment variables)")
    metadata: Any = option(None, "a _target_ returning the DatasetMetadata: the categories")
    sem_seg_mode: str = option(None, "coco_panoptic_folder: stuff_plus_thing | all", optional=True)
    num_thing_classes: int = option(None, "derived from data.metadata (configs/config.yaml); not set by hand")
    num_sem_classes: int = option(None, "derived from data.metadata (configs/config.yaml); not set by hand")
    thing_sem_labels: list[int] = option(None, "derived from data.metadata (configs/config.yaml); not set by hand")
    batch_size: int = option(integer(1), "training images per process")
    num_workers: int = option(integer(0), "DataLoader workers per process")
    skip_bad_images: bool = option(boolean(optional=True), "skip undecodable training images (logged)")
    train: Any = option(None, "a _target_ training dataset (with its transforms)")
    val: Any = option(None, "a _target_ validation dataset (its transforms: the test transform)")


@section("predict", required=False)
class PredictOptions(FromConfig):
    """tools/predict.py (``predict.input`` is required by the predict job only)."""

    input: str | list[str] | None = option(paths(nullable=True), "image file, folder, glob "
                                           "('photos/**/*.jpg' with recursive) or a list of them")
    output_dir: str | None = option(string(nullable=True), "where results go (null: the run dir)")
    batch_size: int = option(integer(1), "images per forward pass (> 1: each image's result depends on "
                                         "the padding to its batch's largest image)")
    num_workers: int = option(integer(0), "DataLoader workers decoding and resizing images (0: the main process)")
    overwrite: bool = option(boolean(), "redo images whose outputs exist (else they are skipped)")
    overlay: bool = option(boolean(), "also write the coloured overlays")
    overlay_alpha: float = option(number(at_least=0, at_most=1), "weight of segment colours in the overlays")
    overlay_format: str = option(one_of("jpg", "png"), "jpg (fast, small) or png (lossless)")
    write_threads: int = option(integer(0), "threads encoding PNGs and drawing overlays while the model runs (0: inline)")
    recursive: bool = option(boolean(), "descend into subfolders of a folder input (and let ** span folders)")
    image_id: str = option(rule_or_regex(*IMAGE_ID_RULES), "how the JSON's image_id is made from a file name")
    json_every: int = option(integer(1), "rewrite panoptic.json after every N finished images (and at the end)")
    semantic: bool = option(boolean(), "also write semantic/<stem>.png (semantic labels as dataset ids)")
    cityscapes_instances: bool = option(boolean(), "also write cityscapes_instances/<city>_<seq>_<frame>_pred.txt "
                                        "+ masks/ (cityscapesScripts' instance-level files; Cityscapes "
                                        "labels, torch backend)")
    backend: str = option(one_of("torch", "onnxruntime"), "onnxruntime: weights is the .onnx file of "
                          "tools/export.py (PNGs + JSON only)")
    progress_bar: bool | str = option(boolean_or_auto(), "auto (on a terminal only) | true | false; a "
                                      "summary line either way")


@section("merge", required=False)
class MergeOptions(FromConfig):
    """tools/merge.py: saved semantic + instance predictions -> COCO panoptic (its inputs are
    required by the merge job only)."""

    semantic_dir: str | None = option(string(nullable=True), "semantic label PNGs in dataset category ids")
    semantic_json: str | None = option(string(nullable=True), "or a COCO semantic results JSON (RLE)")
    instances_json: str | None = option(string(nullable=True), "COCO results JSON: segmentation (RLE), score")
    images_json: str | None = option(string(nullable=True), "COCO-panoptic JSON whose images and categories "
                                     "are merged (null: eval_gt_json)")
    output_dir: str | None = option(string(nullable=True), "null: the run dir")
    rules: str = option(one_of("textbook", "detectron2"), "the preset (panfpn.MergeThresholds); the "
                        "fields below override it")
    score_thresh: str | float = option(preset_or(number()), "preset | a number")
    overlap_thresh: str | float | None = option(preset_or(number(at_least=0), none=True),
                                                "preset | a number >= 0 | null or none (no overlap-ratio rule)")
    stuff_area: str | int = option(preset_or(integer(0)), "preset | an int >= 0")
    thing_min_remaining_area: str | int = option(preset_or(integer(0)), "preset | an int >= 0")
    workers: int = option(integer(0), "processes reading/decoding the inputs (0: the main process)")
    threads: int = option(integer(0), "threads that merge and write one image each (0: inline)")
    eval_gt_json: str | None = option(string(nullable=True), "score the result with our PQ against this "
                                      "COCO-panoptic ground truth")
    overwrite: bool = option(boolean(), "replace what an earlier merge wrote into output_dir (any other "
                             "file there is still refused)")
    progress_bar: bool | str = option(boolean_or_auto(), "auto (on a terminal only) | true | false; a "
                                      "summary line either way")


@section("export", required=False)
class ExportOptions(FromConfig):
    """tools/export.py: the whole pipeline as one ONNX graph, or ``model.network`` to .pt2 and/or .onnx."""

    scope: str = option(one_of("pipeline", "network"), "pipeline: uint8 image in, panoptic result out, as "
                        "one ONNX graph and/or .pt2 (docs/deployment.md); network: the network's raw tensors")
    merge: str = option(one_of("model", "detectron2", "textbook"), "the pipeline's merge rules: the model's "
                        "(model.merge) or a preset")
    format: str = option(one_of("onnx", "torch_export", "both"), "which files to write")
    output: str | None = option(string(nullable=True), "path stem (.onnx/.pt2/.json added); "
                                "null: <run dir>/model")
    height: int = option(integer(MIN_SIZE, maximum=MAX_SIZE, multiple_of=SIZE_DIVISIBILITY),
                         "traced input height; any size when dynamic")
    width: int = option(integer(MIN_SIZE, maximum=MAX_SIZE, multiple_of=SIZE_DIVISIBILITY),
                        "traced input width; any size when dynamic")
    dynamic: bool = option(boolean(), "dynamic batch, height and width")
    opset: int = option(integer(17), "ONNX opset")
    verify: bool = option(boolean(), "compare the exported graphs with the eager network on a random input")
