"""What a training tells its console and ``log.txt``: the start block, a metrics line every
``train.log_period`` iterations, evaluation results, and the progress-bar switch (``auto`` = only
on a terminal), so a run under Slurm with redirected logs says as much as one at a terminal.

train_run calls :func:`log_start`, :func:`log_metrics`, :func:`log_eval` and :func:`log_end`;
everything here is a no-op on non-main ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from panfpn.engine import distributed as du
from panfpn.engine.eval_loop import format_results, metrics_to_scalars
from panfpn.engine.progress import duration
from panfpn.engine.training.solver import reported_lr, schedule_warnings
from panfpn.utils.atomic import atomic_write

logger = logging.getLogger("panfpn")
RESOLVED_CONFIG = "config.yaml"  # the run's resolved config, beside log.txt


def console_above_bar() -> contextlib.AbstractContextManager:
    """Log lines printed above a tqdm bar instead of through it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logger])


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _len(obj: Any) -> str:
    try:
        return str(len(obj))
    except TypeError:
        return "?"


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The config with every interpolation resolved, as ``config.yaml`` in the run dir (None, and a
    warning, when an interpolation cannot be resolved outside the code that reads it)."""
    path = run_dir / RESOLVED_CONFIG
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException as err:
        logger.warning("resolved config not written: %s", err)
        return None
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def start_lines(cfg: DictConfig, *, run_dir: Path, config_file: Path | None, model: torch.nn.Module, train_set: Any,
                val_loader: Any, optimizer: torch.optim.Optimizer, scheduler: Any, resumed: Any,
                device: torch.device) -> list[str]:
    """The start block's lines (label, value)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    world, per_process = du.get_world_size(), int(cfg.data.batch_size)
    base_lr = float(cfg.solver.base_lr)
    lr = reported_lr(optimizer, "initial_lr")
    scaling = "not scaled" if lr == base_lr else f"solver.base_lr={base_lr:g} scaled linearly to the global batch"
    val = "off (train.eval_period=-1)" if val_loader is None else (
        f"{cfg.data.get('name', '?')} val: {_len(val_loader.dataset)} images evaluated per evaluation")
    schedule = getattr(scheduler, "lr_lambdas", [None])[0]
    resume = "fresh start" if not resumed.checkpoint else \
        f"resumed at iteration {resumed.iteration} from {resumed.checkpoint}"
    amp = f"on ({cfg.train.amp_dtype})" if cfg.train.amp else "off"
    rows = [
        ("run folder", str(run_dir)),
        ("config", f"{config_file} (resolved)" if config_file else "not written (see the warning)"),
        ("model", f"{type(model).__name__} ({cfg.model.get('_target_', '?')}): {_count(total)} parameters, "
                  f"{_count(trainable)} trainable"),
        ("train data", f"{cfg.data.get('name', '?')} train: {_len(train_set)} images"),
        ("val data", val),
        ("batch", f"{world} process{'es' if world > 1 else ''} x {per_process} images = global batch "
                  f"{world * per_process} (solver.ims_per_batch={cfg.solver.ims_per_batch})"),
        ("lr", f"{lr:.6g} ({scaling})"),
        ("schedule", f"{_describe_schedule(schedule)}, {cfg.solver.max_iter} iterations, "
                     f"optimizer {type(optimizer).__name__}"),
        ("device", f"{device} ({_device_detail(device)})"),
        ("amp", amp),
        ("seed", str(cfg.seed)),
        ("resume", resume),
    ]
    return [f"  {label:<11s} {value}" for label, value in rows]


def _device_detail(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{threads} CPU thread{'s' if threads != 1 else ''}"


def _describe_schedule(schedule: Any) -> str:
    if schedule is None:
        return "?"
    fields = {k: v for k, v in vars(schedule).items() if not k.startswith("_")}
    return f"{type(schedule).__name__}(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"


def log_start(cfg: DictConfig, metrics_log: Any = None, **facts: Any) -> None:
    """The start block (console and log.txt), schedule warnings and the resolved config (its file
    and TensorBoard text); ``facts`` as :func:`start_lines` takes them, ``run_dir`` included."""
    if not du.is_main_process():
        return
    run_dir = Path(facts["run_dir"])
    config_file = write_resolved_config(cfg, run_dir)
    lines = start_lines(cfg, config_file=config_file, **facts)
    logger.info("training starts\n%s", "\n".join(lines))
    lr = reported_lr(facts["optimizer"], "initial_lr")
    if lr != float(cfg.solver.base_lr):
        logger.warning("lr scaling applied: solver.base_lr=%g is for a global batch of solver.ims_per_batch=%s; "
                       "this run's global batch is %d, so lr=%.6g", cfg.solver.base_lr, cfg.solver.ims_per_batch,
                       du.get_world_size() * int(cfg.data.batch_size), float(lr))
    schedule = getattr(facts["scheduler"], "lr_lambdas", [None])[0]
    for message in schedule_warnings(schedule, int(cfg.solver.max_iter)):
        logger.warning("%s", message)
    if metrics_log is not None and config_file is not None:  # at this attempt's first iteration: a resumed
        # run's config is not a second text at step 0, and a later resume from here purges it
        metrics_log.text("config", config_file.read_text(), step=int(facts["resumed"].iteration) + 1)


class MetricsLine:
    """Formats one training metrics line: iteration/max, ETA, each loss, lr, time/iter, data
    time, peak memory (the scalars of one logged window, as train_run computes them)."""

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter

    def __call__(self, it: int, scalars: Mapping[str, float]) -> str:
        per_iter = float(scalars.get("time/iter", 0.0))
        parts = [f"iter {it}/{self.max_iter}", f"eta {duration(per_iter * (self.max_iter - it))}"]
        if "loss/total" in scalars:
            parts.append(f"loss {scalars['loss/total']:.4f}")
        parts += [f"{k[len('loss/'):]} {v:.4f}" for k, v in scalars.items()
                  if k.startswith("loss/") and k != "loss/total"]
        parts += [f"lr {scalars.get('lr', float('nan')):.4g}", f"time {per_iter:.3f} s/it",
                  f"data {float(scalars.get('time/data', 0.0)):.3f} s"]
        memory = scalars.get("memory/max_allocated_mb", scalars.get("memory/max_rss_mb"))
        if memory is not None:
            parts.append(f"max_mem {memory:.0f} MB" + ("" if "memory/max_allocated_mb" in scalars else " (RSS)"))
        if scalars.get("skipped_steps"):
            parts.append(f"skipped {int(scalars['skipped_steps'])}")
        return "  ".join(parts)


def log_metrics(it: int, max_iter: int, scalars: Mapping[str, float]) -> None:
    """One metrics line in the console and log.txt (main rank)."""
    if du.is_main_process():
        logger.info("%s", MetricsLine(max_iter)(it, scalars))


def per_class_pq(metrics: Mapping[str, Any], metadata: Any) -> dict[str, float]:
    """``pq_per_class/<category name>`` (percent) of one evaluation's per-class results."""
    out: dict[str, float] = {}
    for cat_id, r in metrics["panoptic"].get("per_class", {}).items():
        try:
            name = metadata.category(int(cat_id)).name
        except (KeyError, ValueError, AttributeError):
            name = f"category_{cat_id}"
        out[f"pq_per_class/{name}"] = 100.0 * float(r["pq"])
    return out


def log_eval(metrics_log: Any, it: int, metrics: Mapping[str, Any], metadata: Any, **extra: float) -> None:
    """An evaluation's scalars (and per-class PQ) to TensorBoard / metrics.jsonl, its table to the
    console and log.txt."""
    metrics_log.scalars(it, {**metrics_to_scalars(dict(metrics)), **extra}, kind="eval")
    metrics_log.scalars(it, per_class_pq(metrics, metadata), kind="eval_per_class")
    if du.is_main_process():
        logger.info("evaluation at iteration %d (%s images):\n%s", it, metrics.get("num_images", "?"),
                    format_results(dict(metrics)))


def run_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides: hydra's record of this job (``.hydra/overrides.yaml``, or
    in the subfolder another ``hydra.output_subdir`` named)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        pass
    from panfpn.engine.sweep.relaunch import find_record

    path = find_record(run_dir)
    return [str(o) for o in OmegaConf.load(path)] if path is not None else []


def hparam_values(overrides: Iterable[str]) -> dict[str, Any]:
    """``key=value`` overrides as TensorBoard hparams (numbers, booleans, else strings), each value as
    hydra parsed it for the config: ``1e-3`` is the number 0.001 (YAML 1.1 would keep the text
    ``'1e-3'``), ``on`` stays text; a null, a list, a non-finite number: the override's text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            continue
        try:
            value = parser.parse_override(item).value()
        except (HydraException, ValueError):
            value = raw
        finite = not isinstance(value, float) or math.isfinite(value)
        out[key.lstrip("+~")] = value if isinstance(value, (int, float, bool, str)) and finite else raw
    return out


def log_end(metrics_log: Any, run_dir: Path, result: Mapping[str, Any]) -> None:
    """TensorBoard hparams: the run's overrides and its final metrics (last evaluation, last
    losses), so the HParams tab compares the jobs of a sweep."""
    if not du.is_main_process():
        return
    final = {f"final/{k}": v for k, v in dict(result.get("losses") or {}).items() if k.startswith("loss/")}
    evaluated: dict[str, float] = {}
    if result.get("eval"):
        evaluated = {f"final/{k}": v for k, v in metrics_to_scalars(dict(result["eval"])).items()}
    ended = int(result.get("iteration") or 0)
    # the evaluation's metrics at the iteration it was made (an interrupted run's last one is earlier)
    at = int(result.get("eval_iteration") or ended)
    metrics_log.hparams(hparam_values(run_overrides(run_dir)), {**final, **evaluated}, step=ended,
                        steps={name: at for name in evaluated})
