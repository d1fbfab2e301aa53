"""Checks on the composed hydra config, so a typo fails at start with the key's name.

Hydra already refuses overriding a key that does not exist; these checks catch what a user's own
yaml files (experiments, copied configs) add that nothing reads.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

# Keys the engine reads. model/ and data/ nodes are checked by their constructors (instantiate
# raises on unexpected arguments) plus the data keys the engine reads itself.
KNOWN_KEYS: dict[str, set[str] | None] = {
    "": {"seed", "device", "resume", "weights", "output_dir", "train", "eval", "solver", "model",
         "data", "experiment", "predict", "export"},
    "train": {"log_period", "checkpoint_period", "keep_checkpoints", "eval_period", "amp", "amp_dtype", "clip_grad_norm",
              "on_nonfinite", "num_vis_images", "progress_bar"},
    "eval": {"max_images", "save_predictions", "save_semantic", "compute_ap", "batch_size", "save_overlays"},
    "solver": {"optimizer", "base_lr", "ims_per_batch", "weight_decay", "weight_decay_norm",
               "weight_decay_bias", "max_iter", "schedule"},
    "data": {"train", "val", "metadata", "num_thing_classes", "num_sem_classes", "thing_sem_labels",
             "batch_size", "num_workers", "root", "name", "sem_seg_mode", "skip_bad_images"},
}
CHOICES = {
    "train.on_nonfinite": {"raise", "skip"},
    "train.amp_dtype": {"bfloat16", "float16"},
}


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value outside its choices."""


def _unknown(section: str, keys: Iterable[str], known: set[str]) -> None:
    for key in keys:
        if key not in known:
            full = f"{section}.{key}" if section else key
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {sorted(known)}"
            raise ConfigError(f"unknown config key '{full}'{extra}")


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
    for dotted, choices in CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in choices:
            raise ConfigError(f"config key '{dotted}' must be one of {sorted(choices)}, got {value!r}")
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"config keys without a value (???): {sorted(missing)}")
    if cfg.solver.max_iter <= 0:
        raise ConfigError(f"config key 'solver.max_iter' must be positive, got {cfg.solver.max_iter}")
    keep = cfg.train.get("keep_checkpoints")
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        raise ConfigError(f"config key 'train.keep_checkpoints' must be null or an integer >= 1, "
                          f"got {keep!r}")
