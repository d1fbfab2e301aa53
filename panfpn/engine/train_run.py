"""The training loop: ``train_from_config(cfg) -> dict``, one code path for one process or many (torchrun)."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from panfpn.data.loader import build_training_loader
from panfpn.engine import distributed as du
from panfpn.engine.training import run_log
from panfpn.engine.training.checkpoint import (
    FINAL_CHECKPOINT, capture_rng_state, find_last_checkpoint, prune_checkpoints, remove_stale_temp_files,
    restore_rng_state, save_checkpoint,
)
from panfpn.engine.data_files import check_dataset_files
from panfpn.engine.eval_loop import build_eval_loader, evaluate
from panfpn.engine.progress import bar_enabled
from panfpn.engine.training.elapsed import ELAPSED_KEY, ElapsedTime
from panfpn.engine.training.metrics_log import MetricsLog
from panfpn.engine.inference_model import refuse_replaced_normalisation
from panfpn.engine.model_spec import command_line_overrides, describe_model
from panfpn.engine.rank_errors import told_to_rank_0
from panfpn.engine.training.resume import Resumed, drop_earlier_results, resume_training, warn_fresh_start
from panfpn.engine.training.run_lock import hold_run_dir
from panfpn.engine.training.start_checks import check_model_labels, check_training_config
from panfpn.engine.training.stop_notes import StopNotes
from panfpn.engine.job_setup import build_metadata, fit_threads_to_cpus, move_batch, resolved, setup_logging
from panfpn.modeling.build import build_model
from panfpn.engine.training.solver import build_optimizer, clip_gradients, reported_lr, scaled_lr
from panfpn.evaluation.build import build_evaluators
from panfpn.utils.stop_signals import install_stop_handler, restore_handlers

logger = logging.getLogger("panfpn")
BAD_IMAGES_LOG = "bad_images.txt"  # images data.skip_bad_images skipped: path, image id, error


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite (train.on_nonfinite=raise), or too many steps had to be
    skipped for it (train.on_nonfinite=skip): the run stops without writing model_final."""


class _StopFlag:
    """Set by the first SIGTERM/SIGINT: the loop checkpoints and stops at the next iteration
    boundary (or evaluation batch). A second one of the same signal gets the previous handler's
    behaviour: Ctrl-C twice raises KeyboardInterrupt at once. DataLoader workers forked meanwhile
    inherit the handler and ignore the signal (a terminal's Ctrl-C reaches them too): the main
    process ends them when it stops."""

    def __init__(self, notes: StopNotes | None = None) -> None:
        self.signum: int | None = None
        self.notes = notes  # tell the other ranks' evaluation
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def requested_by_any(self) -> bool:
        """A signal to this rank, or to another one during an evaluation (its note)."""
        return self.requested or (self.notes is not None and self.notes.seen())

    def __enter__(self) -> "_StopFlag":
        self._previous = install_stop_handler(self._handle)  # nohup's ignored signals stay ignored
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker
            return
        if self.signum is None and self.notes is not None:
            self.notes.leave(signum)
        logger.warning("received signal %d: saving a checkpoint and stopping (send it again to abort "
                       "at once)", signum)
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)


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


def _build_solver(cfg: DictConfig, model: torch.nn.Module, device: torch.device):
    """``(optimizer, scheduler, scaler)`` from the solver config, lr scaled to the global batch. A
    value a constructor the config reaches refuses (hydra's instantiate of ``solver.optimizer`` or
    ``solver.schedule``, the optimizer's own argument checks, LambdaLR's: ``solver.schedule.steps``
    past ``solver.max_iter``, ``momentum`` given to AdamW) is a ConfigError naming the key, as a
    multirun's dry start reports it (:func:`panfpn.engine.training.dry_start.solver_config_error`);
    an error anywhere else (the parameter groups, a schedule's lr factor) keeps its traceback."""
    world = du.get_world_size()
    global_batch = int(cfg.data.batch_size) * world
    lr = scaled_lr(float(cfg.solver.base_lr), reference_batch=int(cfg.solver.ims_per_batch),
                   global_batch=global_batch)
    # a scaled lr is said once, by the start block's lr line and its warning (training.run_log.log_start)
    optimizer_factory = partial(_config_refusals, _config_refusals(instantiate, cfg.solver.optimizer))
    optimizer = build_optimizer(
        model, optimizer_factory, lr=lr, weight_decay=float(cfg.solver.weight_decay),
        weight_decay_norm=cfg.solver.weight_decay_norm, weight_decay_bias=cfg.solver.weight_decay_bias,
        weight_decay_embed=cfg.solver.get("weight_decay_embed"), lr_multipliers=cfg.solver.get("lr_multipliers"),
        weight_decay_by_name=cfg.solver.get("weight_decay_by_name"),
    )
    scheduler = _lambda_lr(optimizer, _config_refusals(instantiate, cfg.solver.schedule))
    use_scaler = bool(cfg.train.amp) and cfg.train.amp_dtype == "float16"
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=use_scaler)


def _config_refusals(build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``, a constructor the solver config reaches: its refusal
    (hydra's InstantiationException, a TypeError or ValueError) as a ConfigError naming the key."""
    from hydra.errors import InstantiationException

    from panfpn.engine.training.dry_start import solver_config_error

    try:
        return build(*args, **kwargs)
    except (InstantiationException, TypeError, ValueError) as err:
        raise solver_config_error(err) from err


_LAMBDA_LR_CHECKS = (torch.optim.lr_scheduler.LambdaLR.__init__.__code__,
                     torch.optim.lr_scheduler.LRScheduler.__init__.__code__)


def _lambda_lr(optimizer: torch.optim.Optimizer, schedule: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR on the configured schedule; its own argument checks' refusals (an object the
    optimizer's target built that is no Optimizer) as ConfigErrors, an error raised while it calls
    the schedule for the first lr (the schedule's own code) as it is."""
    from panfpn.engine.training.dry_start import solver_config_error

    try:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    except (TypeError, ValueError) as err:
        if _raised_in(err) not in _LAMBDA_LR_CHECKS:
            raise
        raise solver_config_error(err) from err


def _raised_in(err: BaseException) -> Any:
    """The code object of the frame that raised ``err`` (the innermost of its traceback)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return None if tb is None else tb.tb_frame.f_code


def _checkpoint_state(model, optimizer, scheduler, scaler, iteration: int, cfg: DictConfig,
                      metadata, skipped_steps: int = 0, elapsed_s: float = 0.0) -> dict:
    rng_all_ranks = du.all_gather_objects(capture_rng_state())
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),  # informative: a resume rebuilds it from the config
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "skipped_steps": skipped_steps,
        ELAPSED_KEY: elapsed_s,  # a resumed run's time/elapsed_s continues from it
        "rng": rng_all_ranks,
        "config": OmegaConf.to_yaml(cfg),
        **describe_model(cfg, metadata, model),
    }


def _save(run_dir: Path, state: dict, *, keep: int | None, final: bool = False) -> None:
    if du.is_main_process():
        name = "model_final.pth" if final else f"model_{state['iteration']:07d}.pth"
        path = save_checkpoint(run_dir, name, state)
        logger.info("saved checkpoint %s", path)
        for old in prune_checkpoints(run_dir, keep):
            logger.info("removed old checkpoint %s (train.keep_checkpoints=%d)", old.name, keep)
    du.barrier()


def _remove_stale_temp_files(run_dir: Path) -> None:
    if du.is_main_process():
        for path in remove_stale_temp_files(run_dir):
            logger.warning("removed %s, left by a checkpoint or log write that was killed", path)
    du.barrier()


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


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over all ranks, so every rank takes the same decision."""
    return du.all_reduce_max(torch.tensor(values, dtype=torch.float32, device=device)).tolist()


def _nonfinite_terms(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}


def _nonfinite_message(losses: dict[str, torch.Tensor], it: int) -> str:
    bad = _nonfinite_terms(losses)
    if not bad:
        return f"non-finite loss at iteration {it} on another rank"
    return f"non-finite loss at iteration {it}: " + ", ".join(f"{k}={v}" for k, v in bad.items())


def train_from_config(cfg: DictConfig) -> dict:
    """Train the model the config describes; returns final metrics and the run's facts.

    Returns ``{"iteration", "interrupted", "signal", "checkpoint", "eval", "losses"}`` where
    ``eval`` is the last evaluation's metrics (None when evaluation is off), ``losses`` the last
    logged window and ``signal`` the number of the SIGTERM/SIGINT that stopped the run (a checkpoint
    was saved; ``interrupted`` is then True and tools/train.py exits with 128 + signal).
    """
    check_training_config(cfg)  # the checks a multirun also makes before its first job
    check_dataset_files(cfg)  # before the model and its weights (a download): a missing data root told first
    device = du.init_distributed(cfg.device)
    run_dir = Path(du.shared_run_dir(cfg.output_dir))
    with hold_run_dir(run_dir), told_to_rank_0(run_dir):  # one live training per run folder
        return _train(cfg, device, run_dir)


def _train(cfg: DictConfig, device: torch.device, run_dir: Path) -> dict:
    setup_logging(run_dir if du.is_main_process() else None)
    fit_threads_to_cpus()
    _remove_stale_temp_files(run_dir)
    if not cfg.resume and du.is_main_process():  # before anything can fail: not shown as this run's
        drop_earlier_results(run_dir)
    seed_everything(int(cfg.seed) + du.get_rank())

    metadata = build_metadata(cfg)
    check_model_labels(cfg, metadata)
    model = build_model(cfg).to(device)
    if OmegaConf.select(cfg, "weights"):  # an explicit normalisation the weights replaced: not what was asked
        refuse_replaced_normalisation(model, resolved(cfg, "model") or {}, command_line_overrides(), str(cfg.weights))
    optimizer, scheduler, scaler = _build_solver(cfg, model, device)
    resumed = Resumed()
    if not cfg.resume and du.is_main_process():
        warn_fresh_start(run_dir)
    if cfg.resume:
        resumed = resume_training(run_dir, cfg, model=model, optimizer=optimizer, scheduler=scheduler,
                                  scaler=scaler, metadata=metadata)
    if cfg.resume and resumed.iteration == 0 and du.is_main_process():  # resume=true found no checkpoint
        drop_earlier_results(run_dir)
    model, ddp_model = _wrap_distributed(model, device)

    train_set = instantiate(cfg.data.train)
    if hasattr(train_set, "bad_images_log"):  # data.skip_bad_images lists what it skipped here
        train_set.bad_images_log = run_dir / BAD_IMAGES_LOG
    loader = _training_loader(cfg, train_set, resumed.iteration)
    val_loader = None
    if cfg.train.eval_period >= 0:
        val_loader = build_eval_loader(cfg, instantiate(cfg.data.val))
    log = MetricsLog(run_dir, enabled=du.is_main_process(), resumed_at=resumed.iteration)  # fresh: 0
    bar = tqdm(total=int(cfg.solver.max_iter), initial=resumed.iteration, dynamic_ncols=True, desc="train",
               disable=not (du.is_main_process() and bar_enabled(cfg.train.progress_bar)))
    run_log.log_start(cfg, log, run_dir=run_dir, model=model, train_set=train_set, val_loader=val_loader,
                      optimizer=optimizer, scheduler=scheduler, resumed=resumed, device=device)
    loop = _Loop(cfg, device=device, run_dir=run_dir, model=model, ddp_model=ddp_model,
                 optimizer=optimizer, scheduler=scheduler, scaler=scaler, metadata=metadata, log=log,
                 bar=bar, val_loader=val_loader, resumed=resumed)
    try:
        with _StopFlag(StopNotes(run_dir)) as stop, run_log.console_above_bar():
            result = loop.run(loader, stop)
            stop.notes.clear()
        run_log.log_end(log, run_dir, result)
        return result
    finally:
        bar.close()
        log.close()


class _Loop:
    """One training run: steps, logging, checkpoints and evaluations, from the resumed iteration."""

    def __init__(self, cfg: DictConfig, *, device, run_dir, model, ddp_model, optimizer, scheduler,
                 scaler, metadata, log, bar, val_loader, resumed: Resumed) -> None:
        self.cfg, self.device, self.run_dir, self.metadata = cfg, device, run_dir, metadata
        self.model, self.ddp_model, self.val_loader = model, ddp_model, val_loader
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.log, self.bar = log, bar
        self.step_lr = reported_lr(optimizer)  # the lr of the last step taken
        self.start_iter, self.max_iter = resumed.iteration, int(cfg.solver.max_iter)
        self.skipped, self.consecutive = resumed.skipped_steps, 0
        self.bad_terms: Counter[str] = Counter()
        self.window: dict[str, list[float]] = {}
        self.times = {"iter": 0.0, "data": 0.0, "n": 0}
        self.stop = _StopFlag()
        self.elapsed = ElapsedTime(resumed.elapsed_s)
        self.result: dict[str, Any] = {
            "iteration": self.start_iter, "interrupted": False, "signal": None, "eval": None, "losses": {},
            "checkpoint": str(resumed.checkpoint) if resumed.checkpoint else None}

    def run(self, loader: DataLoader, stop: _StopFlag) -> dict:
        """Train from the start iteration to solver.max_iter, or until a signal stops it."""
        self.stop = stop
        it, period = self.start_iter, int(self.cfg.train.checkpoint_period)
        data_iter = iter(loader)
        self.ddp_model.train()
        t_end = self.elapsed.start()
        if it > 0 and (signum := self.catch_up(it)):  # resumed: what a stop left undone
            self.result.update(interrupted=True, signal=signum)
        while it < self.max_iter:
            batch = move_batch(next(data_iter), self.device)
            t_data = time.perf_counter()
            signum = self.step(batch, it)
            it += 1
            t_now = time.perf_counter()
            self.times["iter"] += t_now - t_end
            self.times["data"] += t_data - t_end
            self.times["n"] += 1
            t_end = t_now
            self.bar.update(1)
            if it % int(self.cfg.train.log_period) == 0 or it == self.max_iter:
                self.log_window(it)
            saved = bool(signum) or it == self.max_iter or it % period == 0
            if saved:
                self.save(it, final=it == self.max_iter)
            if not signum and self.eval_due(it):
                signum = self.evaluate(it)
                if signum and not saved:  # stopped during the evaluation: keep this iteration
                    self.save(it, final=False)
            if signum:
                self.result.update(interrupted=True, signal=signum)
                break
        if stop.requested and not self.result["interrupted"]:  # came during the last save
            self.result.update(interrupted=True, signal=stop.signum)
        self.result["iteration"] = it
        return self.result

    def step(self, batch: dict, it: int) -> int:
        """One optimisation step; returns the signal number any rank received (0: none)."""
        with _autocast(self.cfg, self.device):
            losses = self.ddp_model(batch)
        total = sum(losses.values())
        nonfinite, signum = _max_over_ranks(
            [float(not torch.isfinite(total)), float(self.stop.signum or 0)], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if nonfinite:
            self.nonfinite(losses, it + 1)  # numbered as logged: the first step is iteration 1
        else:
            self.consecutive = 0
            self.scaler.scale(total).backward()
            if self.cfg.train.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.model.parameters(), float(self.cfg.train.clip_grad_norm))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for k, v in losses.items():
                self.window.setdefault(k, []).append(float(v.detach()))
        with warnings.catch_warnings():
            # The schedule follows iterations, also those whose step was skipped (fp16 grad
            # scaler overflow, on_nonfinite=skip); torch warns about that on the first one.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.step_lr = reported_lr(self.optimizer)  # the lr this step used, as logged
            self.scheduler.step()
        return int(signum)

    def nonfinite(self, losses: dict[str, torch.Tensor], it: int) -> None:
        """Raise (on_nonfinite=raise, or too many skipped in a row) or count a skipped step."""
        message = _nonfinite_message(losses, it)
        if self.cfg.train.on_nonfinite == "raise":
            raise NonFiniteLossError(message + " (set train.on_nonfinite=skip to skip such steps)")
        self.skipped += 1
        self.consecutive += 1
        self.bad_terms.update(list(_nonfinite_terms(losses)))
        limit = int(self.cfg.train.max_consecutive_nonfinite)
        if self.consecutive >= limit:
            raise NonFiniteLossError(
                f"{message}: {self.consecutive} non-finite steps in a row (train.max_consecutive_nonfinite="
                f"{limit}); training stopped without writing model_final "
                f"(last checkpoint: {self.result['checkpoint']})")
        logger.warning("%s: step skipped (train.on_nonfinite=skip, %d in a row)", message, self.consecutive)

    def log_window(self, it: int) -> None:
        scalars = _window_scalars(self.window, self.times, self.step_lr, self.device, self.skipped)
        self.result["losses"] = scalars
        self.log.scalars(it, scalars)
        run_log.log_metrics(it, self.max_iter, scalars)
        self.bar.set_postfix(loss=f"{scalars.get('loss/total', float('nan')):.3f}", lr=f"{scalars['lr']:.2e}")
        self.window, self.times = {}, {"iter": 0.0, "data": 0.0, "n": 0}

    def save(self, it: int, *, final: bool) -> None:
        if final:
            self.check_skipped_fraction()
        state = _checkpoint_state(self.model, self.optimizer, self.scheduler, self.scaler, it, self.cfg,
                                  self.metadata, self.skipped, self.elapsed())
        _save(self.run_dir, state, keep=self.cfg.train.keep_checkpoints, final=final)
        self.result["checkpoint"] = str(find_last_checkpoint(self.run_dir))

    def catch_up(self, it: int) -> int:
        """Resumed at ``it``: at solver.max_iter, write model_final.pth when the checkpoint is another
        one (a lowered max_iter) and run the final evaluation (it may have been interrupted); before
        it, the evaluation due at ``it`` when it is not logged (a signal stopped it). Returns the
        signal that stopped this (0: none)."""
        if it == self.max_iter:
            if Path(str(self.result["checkpoint"])).name != FINAL_CHECKPOINT:
                self.save(it, final=True)
            return self.evaluate(it) if self.eval_due(it) else 0
        missing = du.is_main_process() and not self.log.logged(it, "eval")
        if self.eval_due(it) and _max_over_ranks([float(missing)], self.device)[0]:  # main rank decides
            return self.evaluate(it)
        return 0

    def check_skipped_fraction(self) -> None:
        """NonFiniteLossError before model_final when too many of the run's steps were skipped."""
        fraction = self.cfg.train.max_skipped_fraction
        if fraction is None or self.skipped <= float(fraction) * self.max_iter:
            return
        terms = ", ".join(f"{k} x{n}" for k, n in self.bad_terms.most_common()) or "on another rank"
        raise NonFiniteLossError(
            f"{self.skipped} of {self.max_iter} steps were skipped for non-finite losses ({terms}), more "
            f"than train.max_skipped_fraction={fraction}: model_final not written "
            f"(last checkpoint: {self.result['checkpoint']})")

    def eval_due(self, it: int) -> bool:
        period = int(self.cfg.train.eval_period)
        return self.val_loader is not None and (it == self.max_iter or (period > 0 and it % period == 0))

    def evaluate(self, it: int) -> int:
        """Evaluate and log; a signal stops it within a batch (then nothing is logged and the
        signal number is returned, 0 otherwise)."""
        cfg = self.cfg
        if self.stop.notes is not None:
            self.stop.notes.clear()  # before the collective: no rank looks at an earlier note
        signum = int(_max_over_ranks([float(self.stop.signum or 0)], self.device)[0])
        if signum:  # came during the checkpoint save just before
            return signum
        rng = capture_rng_state()  # evaluating must not move training's RNG: resume is exact only then
        metrics = evaluate(self.model, self.val_loader, self.metadata,
                           build_evaluators(cfg, self.metadata, training=True), device=self.device,
                           max_images=cfg.eval.max_images, progress=False, should_stop=self.stop.requested_by_any)
        restore_rng_state(rng)
        self.ddp_model.train()
        signum = int(_max_over_ranks([float(self.stop.signum or 0)], self.device)[0])
        if signum:
            logger.warning("evaluation at iteration %d interrupted by signal %d: its partial metrics "
                           "are not logged", it, signum)
            return signum
        run_log.log_eval(self.log, it, metrics, self.metadata, **{"time/elapsed_s": self.elapsed()})
        if metrics.get("overlays"):
            self.log.images(it, "val/panoptic", metrics["overlays"])
        self.result.update(eval={k: v for k, v in metrics.items() if k != "overlays"}, eval_iteration=it)
        return 0


def _window_scalars(window: dict[str, list[float]], times: dict, lr: float, device, skipped: int) -> dict:
    scalars = {f"loss/{k}": float(np.mean(v)) for k, v in window.items()}
    if window:
        scalars["loss/total"] = float(sum(np.mean(v) for v in window.values()))
    scalars = du.all_reduce_mean(scalars, device)
    n = max(times["n"], 1)
    scalars["lr"] = lr
    scalars["time/iter"] = times["iter"] / n
    scalars["time/data"] = times["data"] / n
    scalars["skipped_steps"] = float(skipped)
    if device.type == "cuda":
        scalars["memory/max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource
        scalars["memory/max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return scalars
