"""Checks on the composed hydra config, so a typo or a bad value fails at start with the key's name.

Hydra already refuses overriding a key that does not exist; these checks catch what a user's own
yaml files (experiments, copied configs) add that nothing reads, and values of the wrong type or
range (``solver.max_iter=abc``, ``resume=maybe``) before any work starts.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

# Keys the engine reads. model/ and data/ nodes are checked by their constructors (instantiate
# raises on unexpected arguments) plus the data keys the engine reads itself.
KNOWN_KEYS: dict[str, set[str] | None] = {
    "": {"seed", "device", "resume", "weights", "output_dir", "train", "eval", "solver", "model",
         "data", "experiment", "predict", "export", "weights_partial", "model_from_checkpoint"},
    "train": {"log_period", "checkpoint_period", "keep_checkpoints", "eval_period", "amp", "amp_dtype", "clip_grad_norm",
              "on_nonfinite", "max_consecutive_nonfinite", "max_skipped_fraction", "num_vis_images",
              "progress_bar"},
    "eval": {"max_images", "save_predictions", "save_semantic", "compute_ap", "batch_size", "save_overlays"},
    "solver": {"optimizer", "base_lr", "ims_per_batch", "weight_decay", "weight_decay_norm",
               "weight_decay_bias", "max_iter", "schedule"},
    "data": {"train", "val", "metadata", "num_thing_classes", "num_sem_classes", "thing_sem_labels",
             "batch_size", "num_workers", "root", "name", "sem_seg_mode", "skip_bad_images"},
}


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value outside its type, range or choices."""


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


def integer(minimum: int | None = None, *, nullable: bool = False) -> Check:
    """An int (not a bool, not a float like 2.5), at least ``minimum``; None too when ``nullable``."""
    wants = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    return Check(("null or " if nullable else "") + wants,
                 lambda v: (nullable and v is None) or (_is_int(v) and (minimum is None or v >= minimum)))


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


# Every engine key the training, eval, predict and export jobs read, with its type and range.
CHECKS: dict[str, Check] = {
    "seed": integer(),
    "resume": boolean(),
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
    "eval.compute_ap": boolean(),
    "eval.batch_size": integer(1),
    "eval.save_overlays": integer(0),
    "solver.base_lr": number(above=0),
    "solver.ims_per_batch": integer(1),
    "solver.weight_decay": number(at_least=0),
    "solver.weight_decay_norm": number(at_least=0, nullable=True),
    "solver.weight_decay_bias": number(at_least=0, nullable=True),
    "solver.max_iter": integer(1),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.skip_bad_images": boolean(optional=True),
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


def _check_values(cfg: DictConfig) -> None:
    for key, check in CHECKS.items():
        section, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, section) if section else cfg
        if leaf not in node:
            if check.optional:
                continue
            raise ConfigError(f"config key '{key}' is missing (it must be {check.wants})")
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(key, value, check)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first unknown key or bad value; also resolves interpolations."""
    for section, known in KNOWN_KEYS.items():
        node = cfg if section == "" else cfg.get(section)
        if node is None:
            if section in ("train", "eval", "solver", "data"):
                raise ConfigError(f"config section '{section}' is missing")
            continue
        if known is not None:
            _unknown(section, node.keys(), known)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"config keys without a value (???): {sorted(missing)}")
    _check_values(cfg)
