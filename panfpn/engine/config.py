"""Checks on the composed hydra config, so a typo or a bad value fails at start with the key's name.

Hydra already refuses overriding a key that does not exist; these checks catch what a user's own
yaml files (experiments, copied configs) add that nothing reads, and values of the wrong type or
range (``solver.max_iter=abc``, ``resume=maybe``, ``export.format=tflite``) before any work starts.
One table (:data:`CHECKS`) covers every job's options (train, eval, predict, export); their
defaults live in configs/config.yaml only, and the jobs read the validated node.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from panfpn.modeling.export import MAX_SIZE, MIN_SIZE, SIZE_DIVISIBILITY
from panfpn.utils.dist import DEVICE_NAMES, is_device_name
from panfpn.utils.errors import ConfigError

# Keys the engine reads. model/ and data/ nodes are checked by their constructors (instantiate
# raises on unexpected arguments) plus the data keys the engine reads itself.
KNOWN_KEYS: dict[str, set[str] | None] = {
    "": {"seed", "device", "resume", "weights", "output_dir", "train", "eval", "solver", "model",
         "data", "experiment", "predict", "export", "merge", "weights_partial", "model_from_checkpoint"},
    "train": {"log_period", "checkpoint_period", "keep_checkpoints", "eval_period", "amp", "amp_dtype", "clip_grad_norm",
              "on_nonfinite", "max_consecutive_nonfinite", "max_skipped_fraction", "num_vis_images",
              "progress_bar"},
    "eval": {"max_images", "save_predictions", "save_semantic", "compute_ap", "batch_size", "save_overlays", "report"},
    "solver": {"optimizer", "base_lr", "ims_per_batch", "weight_decay", "weight_decay_norm",
               "weight_decay_bias", "max_iter", "schedule", "weight_decay_embed", "lr_multipliers"},
    "predict": {"input", "output_dir", "batch_size", "num_workers", "overwrite", "overlay", "overlay_alpha",
                "overlay_format", "write_threads", "recursive", "image_id", "json_every", "semantic"},
    "export": {"format", "output", "height", "width", "dynamic", "opset", "verify"},
    "merge": {"semantic_dir", "semantic_json", "instances_json", "images_json", "output_dir", "rules",
              "score_thresh", "overlap_thresh", "stuff_area", "thing_min_remaining_area", "workers",
              "threads", "eval_gt_json"},
    "data": {"train", "val", "metadata", "num_thing_classes", "num_sem_classes", "thing_sem_labels",
             "batch_size", "num_workers", "root", "name", "sem_seg_mode", "skip_bad_images"},
}

# Sections a job may do without (a config composed for training alone); when present, every key
# of theirs must be there and valid.
OPTIONAL_SECTIONS = ("predict", "export", "merge")
# predict.image_id's named rules (panfpn.engine.predict_run.image_ids); anything else is a regex.
IMAGE_ID_RULES = ("auto", "stem", "cityscapes", "coco_int")


@dataclass(frozen=True)
class Check:
    """One rule for a config value: ``accepts(value)`` and what it wants, for the error message."""

    wants: str
    accepts: Callable[[Any], bool]
    optional: bool = False  # the key may be absent (then nothing is checked)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(minimum: int | None = None, *, maximum: int | None = None, multiple_of: int | None = None,
            nullable: bool = False) -> Check:
    """An int (not a bool, not a float like 2.5) in [``minimum``, ``maximum``], a multiple of
    ``multiple_of``; None too when ``nullable``."""
    wants = "an integer" + (f" >= {minimum}" if minimum is not None else "") \
        + (f" and <= {maximum}" if maximum is not None else "") \
        + (f", a multiple of {multiple_of}" if multiple_of is not None else "")

    def accepts(v: Any) -> bool:
        if nullable and v is None:
            return True
        return _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum) \
            and (multiple_of is None or v % multiple_of == 0)

    return Check(("null or " if nullable else "") + wants, accepts)


def number(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None,
           nullable: bool = False) -> Check:
    """A finite int or float (not a bool) within the given bounds; None too when ``nullable``."""
    bounds = [f"{op} {b}" for op, b in ((">", above), (">=", at_least), ("<=", at_most)) if b is not None]
    wants = " and ".join(["a finite number " + bounds[0], *bounds[1:]]) if bounds else "a finite number"

    def accepts(v: Any) -> bool:
        if nullable and v is None:
            return True
        return _is_number(v) and (above is None or v > above) and (at_least is None or v >= at_least) \
            and (at_most is None or v <= at_most)

    return Check(("null or " if nullable else "") + wants, accepts)


def boolean(*, optional: bool = False) -> Check:
    """A real boolean: hydra parses true/false; 'maybe', 1 or 'yes' are errors."""
    return Check("a boolean (true/false)", lambda v: isinstance(v, bool), optional)


def one_of(*choices: str) -> Check:
    """One of the given strings."""
    return Check(f"one of {sorted(choices)}", lambda v: isinstance(v, str) and v in choices)


def string(*, nullable: bool = False) -> Check:
    """A non-empty string (a path, a name); None too when ``nullable``."""
    return Check(("null or " if nullable else "") + "a non-empty string",
                 lambda v: (nullable and v is None) or (isinstance(v, str) and v != ""))


def paths(*, nullable: bool = False) -> Check:
    """A path or glob, or a non-empty list of them; None too when ``nullable``."""
    def accepts(v: Any) -> bool:
        if isinstance(v, list):
            return bool(v) and all(isinstance(x, str) and x for x in v)
        return (nullable and v is None) or (isinstance(v, str) and v != "")
    return Check(("null or " if nullable else "") + "a path or glob, or a non-empty list of them", accepts)


def rule_or_regex(*names: str) -> Check:
    """One of the named rules, or a regular expression with at least one group (the value it takes)."""
    def accepts(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        if v in names:
            return True
        try:
            return re.compile(v).groups >= 1
        except re.error:
            return False
    return Check(f"one of {list(names)} or a regular expression with a group (the id), e.g. "
                 "'(.+)_leftImg8bit'", accepts)


def preset_or(check: Check, *, none: bool = False) -> Check:
    """``"preset"`` (keep the preset's value) or what ``check`` accepts; with ``none``, also null
    or the string ``"none"`` (a rule switched off)."""
    wants = "'preset', " + ("null or 'none', " if none else "") + check.wants
    return Check(wants, lambda v: v == "preset" or (none and (v is None or v == "none"))
                 or check.accepts(v))


# Every engine key the training, eval, predict and export jobs read, with its type and range.
CHECKS: dict[str, Check] = {
    "seed": integer(),
    "device": Check(DEVICE_NAMES, is_device_name),
    "resume": boolean(),
    "weights": string(nullable=True),
    "weights_partial": boolean(),
    "model_from_checkpoint": boolean(),
    "train.log_period": integer(1),
    "train.checkpoint_period": integer(1),
    "train.keep_checkpoints": integer(1, nullable=True),
    "train.eval_period": integer(-1),
    "train.amp": boolean(),
    "train.amp_dtype": one_of("bfloat16", "float16"),
    "train.clip_grad_norm": number(above=0, nullable=True),
    "train.on_nonfinite": one_of("raise", "skip"),
    "train.max_consecutive_nonfinite": integer(1),
    "train.max_skipped_fraction": number(at_least=0, at_most=1, nullable=True),
    "train.num_vis_images": integer(0),
    "train.progress_bar": boolean(),
    "eval.max_images": integer(1, nullable=True),
    "eval.save_predictions": boolean(),
    "eval.save_semantic": boolean(),
    "eval.compute_ap": boolean(),
    "eval.batch_size": integer(1),
    "eval.save_overlays": integer(0),
    "eval.report": boolean(),
    "solver.base_lr": number(above=0),
    "solver.ims_per_batch": integer(1),
    "solver.weight_decay": number(at_least=0),
    "solver.weight_decay_norm": number(at_least=0, nullable=True),
    "solver.weight_decay_bias": number(at_least=0, nullable=True),
    "solver.max_iter": integer(1),
    "solver.weight_decay_embed": replace(number(at_least=0, nullable=True), optional=True),
    "solver.lr_multipliers": Check("a mapping of parameter-name prefixes to lr factors > 0, e.g. {backbone: 0.1}",
                                   lambda v: isinstance(v, dict) and all(_is_number(x) and x > 0 for x in v.values()),
                                   optional=True),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.skip_bad_images": boolean(optional=True),
    # tools/predict.py (predict.input is required by the predict job only)
    "predict.input": paths(nullable=True),
    "predict.output_dir": string(nullable=True),
    "predict.batch_size": integer(1),
    "predict.num_workers": integer(0),
    "predict.overwrite": boolean(),
    "predict.overlay": boolean(),
    "predict.overlay_alpha": number(at_least=0, at_most=1),
    "predict.overlay_format": one_of("jpg", "png"),
    "predict.write_threads": integer(0),
    "predict.recursive": boolean(),
    "predict.image_id": rule_or_regex(*IMAGE_ID_RULES),
    "predict.json_every": integer(1),
    "predict.semantic": boolean(),
    # tools/merge.py (its inputs are required by the merge job only)
    "merge.semantic_dir": string(nullable=True),
    "merge.instances_json": string(nullable=True),
    "merge.images_json": string(nullable=True),
    "merge.output_dir": string(nullable=True),
    "merge.semantic_json": string(nullable=True),
    "merge.rules": one_of("textbook", "detectron2"),
    "merge.score_thresh": preset_or(number()),
    "merge.overlap_thresh": preset_or(number(at_least=0), none=True),
    "merge.stuff_area": preset_or(integer(0)),
    "merge.thing_min_remaining_area": preset_or(integer(0)),
    "merge.workers": integer(0),
    "merge.threads": integer(0),
    "merge.eval_gt_json": string(nullable=True),
    # tools/export.py
    "export.format": one_of("onnx", "torch_export", "both"),
    "export.output": string(nullable=True),
    "export.height": integer(MIN_SIZE, maximum=MAX_SIZE, multiple_of=SIZE_DIVISIBILITY),
    "export.width": integer(MIN_SIZE, maximum=MAX_SIZE, multiple_of=SIZE_DIVISIBILITY),
    "export.dynamic": boolean(),
    "export.opset": integer(17),
    "export.verify": boolean(),
}


def _unknown(section: str, keys: Iterable[str], known: set[str]) -> None:
    for key in keys:
        if key not in known:
            full = f"{section}.{key}" if section else key
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {sorted(known)}"
            raise ConfigError(f"unknown config key '{full}'{extra}")


def check_value(key: str, value: Any, check: Check) -> None:
    """Raise ConfigError when ``value`` (of config key ``key``) breaks ``check``."""
    if not check.accepts(value):
        raise ConfigError(f"config key '{key}' must be {check.wants}, got {value!r} ({type(value).__name__})")


def _check_values(cfg: DictConfig, sections: Iterable[str]) -> None:
    for key, check in CHECKS.items():
        section, _, leaf = key.rpartition(".")
        if section not in sections:
            continue
        node = OmegaConf.select(cfg, section) if section else cfg
        if node is None and section in OPTIONAL_SECTIONS:
            continue
        if leaf not in node:
            if check.optional:
                continue
            raise ConfigError(f"config key '{key}' is missing (it must be {check.wants})")
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(key, value, check)


def _check_keys(cfg: DictConfig, section: str) -> None:
    """Unknown keys of one section (did-you-mean); a missing required section."""
    node = cfg if section == "" else cfg.get(section)
    if node is None:
        if section in ("train", "eval", "solver", "data"):
            raise ConfigError(f"config section '{section}' is missing")
        return
    known = KNOWN_KEYS.get(section)
    if known is not None:
        _unknown(section, node.keys(), known)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first unknown key or bad value of every section present (the
    predict and export sections too); also resolves interpolations."""
    for section in KNOWN_KEYS:
        _check_keys(cfg, section)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"config keys without a value (???): {sorted(missing)}")
    _check_values(cfg, {key.rpartition(".")[0] for key in CHECKS})


def section_values(cfg: DictConfig, section: str) -> dict[str, Any]:
    """One section's keys as plain values, checked by the same table as :func:`validate_config`
    (unknown keys, types, ranges); for a job reading its own section (``predict``, ``export``).

    Raises:
        ConfigError: naming the key and value; or when the section is absent (a config not
            composed from configs/config.yaml, which holds every default).
    """
    node = OmegaConf.select(cfg, section, default=None)
    if node is None:
        raise ConfigError(f"config section '{section}' is missing (configs/config.yaml has it)")
    _check_keys(cfg, section)
    _check_values(cfg, {section})
    return OmegaConf.to_container(node, resolve=True)
