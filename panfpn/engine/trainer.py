"""The training loop: ``train(cfg) -> dict``, one code path for one process or many (torchrun)."""

from __future__ import annotations

import logging
import math
import random
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from panfpn.data.loader import build_training_loader
from panfpn.engine import distributed as du
from panfpn.engine.checkpoint import (
    capture_rng_state, find_last_checkpoint, load_training_checkpoint, prune_checkpoints,
    restore_rng_state, save_checkpoint,
)
from panfpn.engine.config import validate_config
from panfpn.engine.evaluator import build_eval_loader, evaluate, metrics_to_scalars
from panfpn.engine.metrics_log import MetricsLog
from panfpn.engine.model_spec import describe_model
from panfpn.modeling.build import build_model
from panfpn.engine.setup import build_metadata, move_batch, setup_logging
from panfpn.engine.solver import build_optimizer, clip_gradients, scaled_lr

logger = logging.getLogger("panfpn")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite (train.on_nonfinite=raise)."""


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and exits at the next iteration boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:
        logger.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _training_loader(cfg: DictConfig, dataset, start_iter: int) -> DataLoader:
    return build_training_loader(
        dataset, batch_size=int(cfg.data.batch_size), seed=int(cfg.seed),
        num_workers=int(cfg.data.num_workers), start_iter=start_iter,
        distributed=du.is_distributed(), pin_memory=torch.cuda.is_available())


def _autocast(cfg: DictConfig, device: torch.device):
    if not cfg.train.amp:
        return nullcontext()
    dtype = torch.bfloat16 if cfg.train.amp_dtype == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _checkpoint_state(model, optimizer, scheduler, scaler, iteration: int, cfg: DictConfig,
                      metadata) -> dict:
    rng_all_ranks = [capture_rng_state()]
    if du.is_distributed():
        rng_all_ranks = [None] * du.get_world_size()
        torch.distributed.all_gather_object(rng_all_ranks, capture_rng_state())
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "rng": rng_all_ranks,
        "config": OmegaConf.to_yaml(cfg),
        **describe_model(cfg, metadata),
    }


def _save(run_dir: Path, state: dict, *, keep: int | None, final: bool = False) -> None:
    if du.is_main_process():
        name = "model_final.pth" if final else f"model_{state['iteration']:07d}.pth"
        path = save_checkpoint(run_dir, name, state)
        logger.info("saved checkpoint %s", path)
        for old in prune_checkpoints(run_dir, keep):
            logger.info("removed old checkpoint %s (train.keep_checkpoints=%d)", old.name, keep)
    du.barrier()


def _resume(run_dir: Path, model, optimizer, scheduler, scaler) -> int:
    """Load the last checkpoint of ``run_dir`` into the training state; returns its iteration."""
    last = find_last_checkpoint(run_dir)
    if last is None:
        logger.info("resume=true but %s holds no checkpoint: starting from scratch", run_dir)
        return 0
    ckpt = load_training_checkpoint(last)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    restore_rng_state(rng[du.get_rank()] if len(rng) == du.get_world_size() else rng[0])
    logger.info("resumed from %s at iteration %d", last, ckpt["iteration"])
    return int(ckpt["iteration"])


def _wrap_distributed(model: torch.nn.Module, device: torch.device):
    """``(model, ddp_model)``: SyncBN + DDP under torch.distributed, the model itself otherwise."""
    if not du.is_distributed():
        return model, model
    # SyncBN needs CUDA; on CPU (gloo) BN statistics stay per process.
    if device.type == "cuda" and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=False)
    return model, ddp


def _nonfinite_message(losses: dict[str, torch.Tensor], it: int) -> str:
    bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
    if not bad:
        return f"non-finite loss at iteration {it} on another rank"
    return f"non-finite loss at iteration {it}: " + ", ".join(f"{k}={v}" for k, v in bad.items())


def train(cfg: DictConfig) -> dict:
    """Train the model the config describes; returns final metrics and the run's facts.

    Returns ``{"iteration", "interrupted", "checkpoint", "eval", "losses"}`` where ``eval`` is the
    last evaluation's metrics (None when evaluation is off) and ``losses`` the last logged window.
    """
    validate_config(cfg)
    device = du.init_distributed(cfg.device)
    run_dir = Path(du.shared_run_dir(cfg.output_dir))
    setup_logging(run_dir if du.is_main_process() else None)
    seed_everything(int(cfg.seed) + du.get_rank())

    metadata = build_metadata(cfg)
    model = build_model(cfg).to(device)
    world = du.get_world_size()
    global_batch = int(cfg.data.batch_size) * world
    lr = scaled_lr(float(cfg.solver.base_lr), reference_batch=int(cfg.solver.ims_per_batch),
                   global_batch=global_batch)
    if global_batch != int(cfg.solver.ims_per_batch):
        logger.info("global batch %d (%d per process x %d) differs from solver.ims_per_batch=%d: "
                    "lr scaled linearly %.6g -> %.6g", global_batch, cfg.data.batch_size, world,
                    cfg.solver.ims_per_batch, cfg.solver.base_lr, lr)
    optimizer = build_optimizer(
        model, instantiate(cfg.solver.optimizer), lr=lr, weight_decay=float(cfg.solver.weight_decay),
        weight_decay_norm=cfg.solver.weight_decay_norm, weight_decay_bias=cfg.solver.weight_decay_bias,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, instantiate(cfg.solver.schedule))
    use_scaler = bool(cfg.train.amp) and cfg.train.amp_dtype == "float16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start_iter = _resume(run_dir, model, optimizer, scheduler, scaler) if cfg.resume else 0
    model, ddp_model = _wrap_distributed(model, device)

    train_set = instantiate(cfg.data.train)
    loader = _training_loader(cfg, train_set, start_iter)
    val_loader = None
    if cfg.train.eval_period >= 0:
        val_loader = build_eval_loader(cfg, instantiate(cfg.data.val))

    max_iter = int(cfg.solver.max_iter)
    log = MetricsLog(run_dir, enabled=du.is_main_process())
    result: dict[str, Any] = {"iteration": start_iter, "interrupted": False, "eval": None,
                              "losses": {}, "checkpoint": None}
    window: dict[str, list[float]] = {}
    times = {"iter": 0.0, "data": 0.0, "n": 0}
    skipped = 0
    bar = tqdm(total=max_iter, initial=start_iter, disable=not (du.is_main_process() and cfg.train.progress_bar),
               dynamic_ncols=True, desc="train")
    it = start_iter
    ddp_model.train()
    data_iter = iter(loader)
    with _StopFlag() as stop:
        t_start = t_end = time.perf_counter()
        while it < max_iter:
            batch = move_batch(next(data_iter), device)
            t_data = time.perf_counter()
            with _autocast(cfg, device):
                losses = ddp_model(batch)
            total = sum(losses.values())
            flags = torch.tensor([float(not torch.isfinite(total)), float(stop.requested)], device=device)
            if du.is_distributed():
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            nonfinite, stop_now = bool(flags[0]), bool(flags[1])
            if nonfinite:
                message = _nonfinite_message(losses, it)
                if cfg.train.on_nonfinite == "raise":
                    bar.close()
                    log.close()
                    raise NonFiniteLossError(message + " (set train.on_nonfinite=skip to skip such steps)")
                logger.warning("%s: step skipped (train.on_nonfinite=skip)", message)
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.train.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    clip_gradients(model.parameters(), float(cfg.train.clip_grad_norm))
                scaler.step(optimizer)
                scaler.update()
                for k, v in losses.items():
                    window.setdefault(k, []).append(float(v.detach()))
            with warnings.catch_warnings():
                # The schedule follows iterations, also those whose step was skipped (fp16 grad
                # scaler overflow, on_nonfinite=skip); torch warns about that on the first one.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            it += 1
            t_now = time.perf_counter()
            times["iter"] += t_now - t_end
            times["data"] += t_data - t_end
            times["n"] += 1
            t_end = t_now
            bar.update(1)

            if it % int(cfg.train.log_period) == 0 or it == max_iter:
                scalars = _window_scalars(window, times, optimizer, device, skipped)
                result["losses"] = scalars
                log.scalars(it, scalars)
                bar.set_postfix(loss=f"{scalars.get('loss/total', float('nan')):.3f}",
                                lr=f"{scalars['lr']:.2e}")
                window, times = {}, {"iter": 0.0, "data": 0.0, "n": 0}
            if stop_now:
                _save(run_dir, _checkpoint_state(model, optimizer, scheduler, scaler, it, cfg, metadata),
                      keep=cfg.train.keep_checkpoints)
                result.update(iteration=it, interrupted=True,
                              checkpoint=str(find_last_checkpoint(run_dir)))
                break
            if it % int(cfg.train.checkpoint_period) == 0 or it == max_iter:
                _save(run_dir, _checkpoint_state(model, optimizer, scheduler, scaler, it, cfg, metadata),
                      keep=cfg.train.keep_checkpoints, final=it == max_iter)
                result["checkpoint"] = str(find_last_checkpoint(run_dir))
            eval_period = int(cfg.train.eval_period)
            if val_loader is not None and (it == max_iter or (eval_period > 0 and it % eval_period == 0)):
                metrics = evaluate(model, val_loader, metadata, device=device,
                                   compute_ap=bool(cfg.eval.compute_ap), max_images=cfg.eval.max_images,
                                   num_vis=int(cfg.train.num_vis_images), progress=False)
                log.scalars(it, {**metrics_to_scalars(metrics), "time/elapsed_s": time.perf_counter() - t_start},
                            kind="eval")
                if metrics.get("overlays"):
                    log.images(it, "val/panoptic", metrics["overlays"])
                result["eval"] = {k: v for k, v in metrics.items() if k != "overlays"}
                ddp_model.train()
    bar.close()
    log.close()
    result["iteration"] = it
    return result


def _window_scalars(window: dict[str, list[float]], times: dict, optimizer, device, skipped: int) -> dict:
    scalars = {f"loss/{k}": float(np.mean(v)) for k, v in window.items()}
    if window:
        scalars["loss/total"] = float(sum(np.mean(v) for v in window.values()))
    scalars = du.all_reduce_mean(scalars, device)
    n = max(times["n"], 1)
    scalars["lr"] = optimizer.param_groups[0]["lr"]
    scalars["time/iter"] = times["iter"] / n
    scalars["time/data"] = times["data"] / n
    scalars["skipped_steps"] = float(skipped)
    if device.type == "cuda":
        scalars["memory/max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource
        scalars["memory/max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return scalars
