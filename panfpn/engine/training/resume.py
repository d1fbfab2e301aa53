"""Resume a run from its run dir: right, or a clear error.

The newest checkpoint that loads is used (a corrupt one is named and skipped); the model config
and the categories must be the checkpoint's (a changed seed, training data, AMP or clipping is
logged); the optimizer, lr schedule and their hyperparameters follow the CURRENT solver config
(so ``solver.max_iter`` can be raised to extend a run), and the log says what changed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from panfpn.data.metadata import DatasetMetadata
from panfpn.engine import distributed as du
from panfpn.engine.training.checkpoint import load_resumable, restore_rng_state, resume_candidates
from panfpn.engine.training.elapsed import recorded_elapsed
from panfpn.engine.config import ConfigError
from panfpn.engine.model_spec import renamed_categories, same_labels, with_loaded_settings
from panfpn.engine.training.solver import base_group, set_schedule_iteration

logger = logging.getLogger("panfpn")
_ABSENT = "<absent>"
# What decides the samples a run reads (order, images, augmentation seeds); data.num_workers does not.
DATA_KEYS = ("seed", "data.batch_size", "data.train")
# How a step is computed, besides solver.* (listed on its own).
STEP_KEYS = ("train.amp", "train.amp_dtype", "train.clip_grad_norm", "train.on_nonfinite")


@dataclass
class Resumed:
    """Where a resumed run starts."""

    iteration: int = 0
    skipped_steps: int = 0
    checkpoint: Path | None = None
    elapsed_s: float = 0.0  # training time up to the checkpoint, over its attempts


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}"))
        return flat
    return {prefix: node}


def config_changes(old: dict, new: dict, prefix: str) -> list[str]:
    """``["prefix.key: old -> new", ...]`` for every leaf that differs (lists count as leaves)."""
    a, b = _flatten(old, prefix), _flatten(new, prefix)
    return [f"{key}: {a.get(key, _ABSENT)!r} -> {b.get(key, _ABSENT)!r}"
            for key in sorted(set(a) | set(b)) if a.get(key, _ABSENT) != b.get(key, _ABSENT)]


def _container(node: Any) -> Any:
    """A config node as plain data, resolved when its interpolations resolve."""
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(node, resolve=False)


def checkpoint_section(ckpt: dict, name: str) -> dict | None:
    """Section ``name`` of the config a checkpoint was trained with (its ``config`` yaml)."""
    text = ckpt.get("config")
    node = OmegaConf.select(OmegaConf.create(text), name) if text else None
    return _container(node) if node is not None else None


def check_same_model(cfg: DictConfig, ckpt: dict, path: Path, model: Any = None) -> None:
    """ConfigError naming every model key that differs from the checkpoint's model config (``model``:
    the built model, whose settings loading its weights changed count, as the checkpoint records them)."""
    if ckpt.get("model_config"):
        old = _container(OmegaConf.create(ckpt["model_config"]))
    else:
        old = checkpoint_section(ckpt, "model")
    if old is None:
        logger.warning("%s records no model config: cannot check that the model is the same", path)
        return
    changes = config_changes(old, with_loaded_settings(_container(cfg.model), model), "model")
    if changes:
        raise ConfigError(f"resume=true: the model config differs from the one {path} was trained "
                          f"with: {'; '.join(changes)}. Resume with the checkpoint's model config, or "
                          f"start a new run (another output_dir) with weights={path}")


def _label_changes(old: DatasetMetadata, new: DatasetMetadata) -> list[str]:
    """``class i: id 3 'ellipse' (thing) -> id 1 'ellipse' (thing)`` for each contiguous class
    index whose category differs, and a changed semantic mode."""
    def show(c) -> str:
        return "<absent>" if c is None else f"id {c.id} '{c.name}' ({'thing' if c.isthing else 'stuff'})"
    a, b = list(old.categories), list(new.categories)
    pad = [None] * abs(len(a) - len(b))
    a, b = (a + pad, b) if len(a) < len(b) else (a, b + pad)
    out = [f"class {i}: {show(x)} -> {show(y)}" for i, (x, y) in enumerate(zip(a, b))
           if x is None or y is None or (x.id, x.name, x.isthing) != (y.id, y.name, y.isthing)]
    if old.sem_seg_mode != new.sem_seg_mode:
        out.append(f"sem_seg_mode: {old.sem_seg_mode} -> {new.sem_seg_mode}")
    return out


def check_same_labels(metadata: DatasetMetadata, ckpt: dict, path: Path) -> None:
    """ConfigError when data.metadata has other categories than the checkpoint's training: with
    the same class counts the model config is the same, but its classes would change meaning."""
    meta = ckpt.get("metadata")
    if not meta:  # written before checkpoints recorded labels: the class counts were compared
        return
    old = DatasetMetadata.from_coco_categories(meta["categories"], sem_seg_mode=meta["sem_seg_mode"],
                                               name=meta.get("name", ""))
    if same_labels(old, metadata) and not renamed_categories(old, metadata):
        return
    changes = _label_changes(old, metadata)
    raise ConfigError(f"resume=true: {path} was trained on the categories of '{old.name}' but data.metadata "
                      f"('{metadata.name}') has others: {'; '.join(changes[:6])}"
                      f"{f' (and {len(changes) - 6} more)' if len(changes) > 6 else ''}. Resume with the "
                      f"checkpoint's dataset, or start a new run (another output_dir) with weights={path}")


def _changes(cfg: DictConfig, old_cfg: DictConfig, keys: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for key in keys:
        old, new = (OmegaConf.select(c, key, default=None, throw_on_resolution_failure=False) for c in (old_cfg, cfg))
        out += config_changes(_container(old) if OmegaConf.is_config(old) else old,
                              _container(new) if OmegaConf.is_config(new) else new, key)
    return out


def _warn_run_changes(cfg: DictConfig, ckpt: dict, path: Path) -> None:
    """Warn when seed, the training data or how a step is computed (AMP, clipping) changed: the
    resumed run then differs from the uninterrupted one (allowed: e.g. the dataset moved)."""
    text = ckpt.get("config")
    if not text:
        return
    old_cfg = OmegaConf.create(text)
    data, step = _changes(cfg, old_cfg, DATA_KEYS), _changes(cfg, old_cfg, STEP_KEYS)
    if data:
        logger.warning("resume: the training data changed since %s (%s): the resumed run reads other samples, "
                       "or in another order or with other augmentations, than the uninterrupted run would",
                       path, "; ".join(data))
    if step:
        logger.warning("resume: the training step changed since %s (%s): the steps from here on are computed "
                       "otherwise than the uninterrupted run's", path, "; ".join(step))


def _check_solver(cfg: DictConfig, old: dict | None, path: Path) -> list[str]:
    """The solver changes since the checkpoint; ConfigError for those that cannot resume."""
    if old is None:
        logger.warning("%s records no config: the solver changes since it cannot be listed", path)
        return []
    new = _container(cfg.solver)
    old_opt = (old.get("optimizer") or {}).get("_target_")
    new_opt = (new.get("optimizer") or {}).get("_target_")
    if old_opt != new_opt:
        raise ConfigError(f"resume=true: solver.optimizer._target_ is {new_opt!r} but {path} holds the "
                          f"state of {old_opt!r}; an optimizer's state cannot be carried to another one")
    return config_changes(old, new, "solver")


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Load the optimizer's state (momenta) but keep the hyperparameters the current config set."""
    current = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise ConfigError(f"resume=true: the optimizer state in {path} does not fit the current parameter "
                          f"groups ({err}); the weight-decay split (solver.weight_decay_norm / "
                          f"solver.weight_decay_bias) or the trainable parameters changed") from err
    for group, hyper in zip(optimizer.param_groups, current):
        group.update(hyper)


def _check_iteration(iteration: int, cfg: DictConfig, path: Path) -> None:
    max_iter = int(cfg.solver.max_iter)
    if iteration > max_iter:
        raise ConfigError(f"resume=true: {path} is at iteration {iteration}, past solver.max_iter={max_iter}; "
                          f"raise solver.max_iter to continue the run")
    if iteration == max_iter:
        logger.info("%s is at solver.max_iter=%d: nothing left to train; model_final.pth (when it is "
                    "another checkpoint) and the final evaluation (unless train.eval_period=-1) follow", path, max_iter)


def check_resume_start(cfg: DictConfig, ckpt: dict, path: Path, *, model: Any = None,
                       metadata: DatasetMetadata | None = None) -> list[str]:
    """What resuming from checkpoint ``ckpt`` (at ``path``) checks before it loads anything: a
    ConfigError for another model, other categories, another optimizer or an iteration past
    ``solver.max_iter``; warnings (logged only) for a changed seed, training data or step. Returns
    the solver changes. A multirun's dry start runs it too, on a meta model and an mmapped checkpoint."""
    check_same_model(cfg, ckpt, path, model)
    if metadata is not None:
        check_same_labels(metadata, ckpt, path)
    _warn_run_changes(cfg, ckpt, path)
    changes = _check_solver(cfg, checkpoint_section(ckpt, "solver"), path)
    _check_iteration(int(ckpt["iteration"]), cfg, path)
    return changes


def warn_fresh_start(run_dir: str | os.PathLike) -> None:
    """resume=false in a folder that holds checkpoints (a requeued job without resume=true?): say
    that this run starts from scratch and replaces the earlier run's logs and checkpoints."""
    found = resume_candidates(run_dir)
    if found:
        logger.warning("resume=false but %s holds checkpoints of an earlier run (%s): this run starts from "
                       "scratch; its metrics.jsonl and TensorBoard records replace the earlier run's, and its "
                       "checkpoints overwrite them (resume=true continues the earlier run instead)",
                       run_dir, ", ".join(p.name for p in found[:3]))


def drop_earlier_results(run_dir: str | os.PathLike) -> None:
    """A fresh start in a used folder: remove the earlier run's ``eval_results.json`` (its final
    evaluation), which this run replaces only if it evaluates; left there, a sweep summary showed
    a failed (or never evaluated) new run with the earlier run's metrics."""
    path = Path(run_dir) / "eval_results.json"  # panfpn.engine.training.job.EVAL_RESULTS
    if path.is_file():
        path.unlink()
        logger.warning("removed %s of an earlier run in this folder: this run starts from scratch and writes "
                       "its own when it evaluates", path)


def resume_training(run_dir: str | os.PathLike, cfg: DictConfig, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    scaler: torch.amp.GradScaler, metadata: DatasetMetadata | None = None) -> Resumed:
    """Load the newest loadable checkpoint of ``run_dir`` into the training state built from
    ``cfg``; the lr schedule is ``cfg``'s, set to the checkpoint's iteration."""
    found = load_resumable(run_dir)
    if found is None:
        logger.warning("resume=true but %s holds no checkpoint: starting from scratch (to continue a run, "
                       "give its folder: hydra.run.dir=<run folder>; without it each run gets a new one)", run_dir)
        return Resumed()
    path, ckpt = found
    iteration = int(ckpt["iteration"])
    changes = check_resume_start(cfg, ckpt, path, model=model, metadata=metadata)
    model.load_state_dict(ckpt["model"])
    _load_optimizer(optimizer, ckpt["optimizer"], path)
    if ckpt["scaler"]:  # empty: saved without float16 AMP; a scaler turned on now starts fresh
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    restore_rng_state(rng[du.get_rank()] if len(rng) == du.get_world_size() else rng[0])
    base = base_group(optimizer)
    i = next(i for i, g in enumerate(optimizer.param_groups) if g is base)  # the reported lr
    lr = set_schedule_iteration(scheduler, iteration)[i]
    old_lr = float(ckpt["optimizer"]["param_groups"][i]["lr"])
    if changes or not math.isclose(lr, old_lr, rel_tol=1e-9, abs_tol=0.0):
        logger.warning("resume: the solver config changed since %s (%s); the lr schedule follows the "
                       "current config: lr %.6g at iteration %d (the checkpoint had %.6g)", path,
                       "; ".join(changes) or "only the lr scaling for the global batch", lr, iteration, old_lr)
    logger.info("resumed from %s at iteration %d (lr %.6g)", path, iteration, lr)
    return Resumed(iteration, int(ckpt.get("skipped_steps", 0)), path, recorded_elapsed(ckpt, path))
