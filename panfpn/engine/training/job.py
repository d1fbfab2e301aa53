"""A training as one job of an experiment (tools/train.py): its result files and its objective.

Each run folder ends with ``job_status.json`` (done / failed / interrupted, iteration, wall time
of the attempt and of the run over its attempts, error, objective) and, when it evaluated,
``eval_results.json`` (the last evaluation, the same format as tools/eval.py's plus ``iteration``,
the one it was made at: before the end when a signal stopped the run). Sweep summaries
(:mod:`panfpn.engine.sweep.summary`) read these files, never recompute them. ``train.objective``
names the number tools/train.py returns to hydra's sweepers (Optuna).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from panfpn.engine.tool_errors import input_error
from panfpn.evaluation.cityscapes_pixel_names import NAME as CITYSCAPES_PIXEL, SCORES as CITYSCAPES_PIXEL_SCORES
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.errors import ConfigError
from panfpn.utils.json_file import JSONFileError, load_json
from panfpn.utils.json_values import nonfinite_to_null
from panfpn.utils.stop_signals import job_finished

logger = logging.getLogger("panfpn")
JOB_STATUS = "job_status.json"
EVAL_RESULTS = "eval_results.json"
# Scalar names the objective may take without an evaluation (the last logged window).
LOSS_PREFIX = "loss/"


class TrainingInterrupted(Exception):
    """A signal stopped the training after a checkpoint (raised by tools/train.py in a multirun so
    that hydra's sweep callback records the job; the callback then stops the sweep)."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | None) -> None:
        super().__init__(f"training interrupted by signal {signum} at iteration {iteration}; checkpoint "
                         f"{checkpoint} (continue with resume=true)")
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


# The objective's possible names: the final evaluation's scalars (as TensorBoard shows them) and losses.
OBJECTIVE_NAMES = (*(f"{k}/{s}" for k in ("pq", "sq", "rq") for s in ("All", "Things", "Stuff")), "sem_seg/mIoU",
                   *(f"{t}/{k}" for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
                   "cityscapes_ap/AP", "cityscapes_ap/AP50",
                   *(f"{CITYSCAPES_PIXEL}/{k}" for k in CITYSCAPES_PIXEL_SCORES), "loss/total")


def check_objective(cfg: DictConfig) -> str | None:
    """ConfigError at start for a ``train.objective`` no run can give (did-you-mean), or an AP
    with ``eval.compute_ap=false``; returns a warning when this run does not evaluate (then the
    objective is None)."""
    name = cfg.train.get("objective")
    if name is None or str(name).startswith(LOSS_PREFIX):
        return None
    if name not in OBJECTIVE_NAMES:
        hint = difflib.get_close_matches(str(name), OBJECTIVE_NAMES, n=1)
        raise ConfigError(f"config key 'train.objective' is {name!r}, not a metric name"
                          + (f"; did you mean '{hint[0]}'?" if hint else f"; one of {list(OBJECTIVE_NAMES)} or "
                             "a 'loss/...' name"))
    section = str(name).split("/")[0]  # the results section (and so the evaluator) the objective is read from
    if section in ("bbox", "segm") and not cfg.eval.compute_ap:
        raise ConfigError(f"config key 'train.objective' is {name!r} but eval.compute_ap=false")
    if section in ("cityscapes_ap", "cityscapes_sem_seg") and section not in list(cfg.eval.get("evaluators") or []):
        raise ConfigError(f"config key 'train.objective' is {name!r} but eval.evaluators has no {section}")
    if int(cfg.train.eval_period) < 0:
        return (f"train.objective={name} needs an evaluation but train.eval_period=-1: this run returns no "
                "objective (a sweeper counts it as failed)")
    return None


def objective_value(cfg: DictConfig, result: Mapping[str, Any]) -> float | None:
    """The value of ``train.objective`` in a finished training's result: a scalar name of the
    final evaluation as TensorBoard shows it (``pq/All``, ``sem_seg/mIoU``, ``segm/AP``, percent)
    or of the last logged losses (``loss/total``); None when no objective is configured."""
    name = cfg.train.get("objective")
    if name is None:
        return None
    values = {k: v for k, v in dict(result.get("losses") or {}).items() if k.startswith(LOSS_PREFIX)}
    if result.get("eval"):
        from panfpn.engine.eval_loop import metrics_to_scalars

        values.update(metrics_to_scalars(dict(result["eval"])))
    if name not in values and not result.get("eval") and not str(name).startswith(LOSS_PREFIX):
        return None  # no evaluation (check_objective warned)
    if name not in values and name in OBJECTIVE_NAMES and not str(name).startswith(LOSS_PREFIX):
        # its evaluator ran (check_objective), but the score is undefined on these images (a COCO AP
        # of an area without ground truth, a Cityscapes AP or iIoU without instances): the training
        # is done, its files are written; it returns no objective, as without an evaluation
        section = str(name).split("/")[0]
        why = ("no ground truth of it in the scored images" if section in result["eval"]
               else f"the evaluation has no {section} results")
        logger.warning("config key 'train.objective': %s is undefined in the final evaluation (%s): this run "
                       "returns no objective (a sweeper counts it as failed); eval_results.json has the other "
                       "metrics", name, why)
        return None
    if name not in values:
        raise ConfigError(f"config key 'train.objective' is {name!r}, not a metric of this run; it has "
                          f"{sorted(values)}")
    return float(values[name])


def is_main_rank() -> bool:
    """Whether this process writes the run's files and says the run's last line: rank 0 of a group,
    or of a launch (torchrun's RANK) whose group has ended."""
    from panfpn.engine import distributed as du  # torch: not for the sweep callback's imports

    if du.is_distributed():
        return du.is_main_process()
    return du.launch_rank() == 0


@dataclass(frozen=True)
class EarlierAttempts:
    """The attempts before this one of the run it continues (``resume=true`` from a checkpoint):
    their wall time and count, from the job_status.json the last of them wrote."""

    wall_s: float = 0.0
    attempts: int = 0


def earlier_attempts(cfg: DictConfig, run_dir: Path) -> EarlierAttempts:
    """What the earlier attempts of this run took, when this attempt continues it (``resume=true``
    and the folder holds a checkpoint); none for a fresh start, whatever the folder holds. An
    attempt killed outright wrote no job_status.json: its time is not known. An unreadable record
    is a warning naming it, and counts as none."""
    from panfpn.engine.training.checkpoint import resume_candidates  # torch: not for the sweep callback

    path = run_dir / JOB_STATUS
    if not cfg.get("resume") or not path.is_file() or not resume_candidates(run_dir):
        return EarlierAttempts()
    try:
        record = load_json(path)
        wall = float(record["wall_s"])  # the total over its attempts (before attempt_wall_s: its own)
        attempts = int(record.get("attempts", 1))
    except (JSONFileError, KeyError, TypeError, ValueError) as err:
        logger.warning("%s: the earlier attempts' wall time is not read (%s: %s); wall_s counts this attempt only",
                       path, type(err).__name__, err)
        return EarlierAttempts()
    if not math.isfinite(wall) or wall < 0 or attempts < 1:
        logger.warning("%s: wall_s %r / attempts %r are not a time and a count; wall_s counts this attempt only",
                       path, record.get("wall_s"), record.get("attempts"))
        return EarlierAttempts()
    return EarlierAttempts(wall, attempts)


def write_job_status(run_dir: Path, status: str, *, started: float, cfg: DictConfig,
                     earlier: EarlierAttempts = EarlierAttempts(), **facts: Any) -> None:
    """``job_status.json`` of a run folder (main rank): ``attempt_wall_s`` is this attempt's wall
    time, ``wall_s`` the run's over its ``attempts`` (``earlier`` ones included: a resumed run)."""
    if not is_main_rank():
        return
    attempt = round(time.time() - started, 3)
    record = {"status": status, "max_iter": int(cfg.solver.max_iter),
              "objective": {"name": cfg.train.get("objective"),
                            "direction": cfg.train.get("objective_direction", "maximize"),
                            "value": facts.pop("objective_value", None)},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "wall_s": round(earlier.wall_s + attempt, 3), "attempt_wall_s": attempt,
              "attempts": earlier.attempts + 1, **facts}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / JOB_STATUS, nonfinite_to_null(record))


def run_training_job(cfg: DictConfig) -> dict:
    """``train_from_config(cfg)`` plus the run folder's ``job_status.json`` (also when it fails or
    is interrupted) and ``eval_results.json`` (final evaluation); the result gets ``objective``."""
    from panfpn.engine.training.job_signals import job_stop_signals

    started = time.time()
    run_dir = Path(str(cfg.output_dir))
    earlier = EarlierAttempts()
    with job_stop_signals() as signals:  # outside the loop: a stop signal is an error, status written
        try:
            # imported here, under the handler: torch & co take seconds, and a SIGTERM then killed the job
            from panfpn.engine.distributed import job_log_on_rank_0_only
            from panfpn.engine.job_setup import start_job_logging
            from panfpn.engine.train_run import train_from_config
            from panfpn.engine.training.start_checks import check_job_start

            job_log_on_rank_0_only()
            start_job_logging()  # the start checks' warnings: the tool's format, stderr and log.txt
            earlier = earlier_attempts(cfg, run_dir)  # before this attempt writes its own record
            warning = check_job_start(cfg)
            if warning:
                logger.warning("%s", warning)
            result = train_from_config(cfg)
            result["objective"] = objective_value(cfg, result) if not result["interrupted"] else None
        except BaseException as err:
            signals.defer()  # e.g. torchrun's SIGTERM after another rank failed: the status first
            # stopped by a signal: this rank (a KeyboardInterrupt) or another one alone (OtherRankFailedError)
            status = "interrupted" if isinstance(err, KeyboardInterrupt) or getattr(err, "signum", None) else "failed"
            told = input_error(err) or err  # a known input error by its own words, not its wrapper's
            write_job_status(run_dir, status, started=started, cfg=cfg, earlier=earlier, iteration=None,
                             signal=getattr(err, "signum", None), error=f"{type(told).__name__}: {told}",
                             traceback=traceback.format_exc(limit=8)[-4000:])
            raise
        signals.defer()  # finished: a signal now (without a handler it killed us) must not lose the files
        _write_outcome(cfg, run_dir, result, started, earlier)
        if not result["interrupted"]:  # tools/train.py: a signal from now on says the training is done
            job_finished(finished_training(run_dir, result["checkpoint"], result["eval"] is not None))
    return result


def finished_training(run_dir: Path, checkpoint: str | None, evaluated: bool) -> Callable[[], str]:
    """What a finished training left, for the line of a stop signal after it (tools/train.py),
    e.g. ``final checkpoint runs/x/model_final.pth; in runs/x: eval_results.json, job_status.json
    says done at iteration 4 of 4``: read from disk when the signal comes."""
    def describe() -> str:
        try:
            record = json.loads((run_dir / JOB_STATUS).read_text())
            said = f"{JOB_STATUS} says {record['status']} at iteration {record['iteration']} of {record['max_iter']}"
        except (OSError, ValueError, KeyError, TypeError) as err:
            said = f"{JOB_STATUS} unreadable ({type(err).__name__}: {err})"
        final = f"final checkpoint {checkpoint}" if checkpoint and Path(checkpoint).is_file() else "no checkpoint"
        return f"{final}; in {run_dir}: " + (f"{EVAL_RESULTS}, " if evaluated else "") + said
    return describe


def _write_outcome(cfg: DictConfig, run_dir: Path, result: dict, started: float, earlier: EarlierAttempts) -> None:
    """``eval_results.json`` (when it evaluated) and ``job_status.json`` of a training that ended."""
    if result["eval"] is not None and is_main_rank():
        # strict JSON, as tools/eval.py's: an undefined metric (a class absent from the images) is null
        results = nonfinite_to_null(json.loads(json.dumps(result["eval"], default=str)))
        results["iteration"] = result.get("eval_iteration")  # an interrupted run's last evaluation is earlier
        write_json_atomic(run_dir / EVAL_RESULTS, results)
    write_job_status(run_dir, "interrupted" if result["interrupted"] else "done", started=started, cfg=cfg,
                     earlier=earlier, iteration=result["iteration"], signal=result["signal"],
                     checkpoint=result["checkpoint"],
                     skipped_steps=int((result.get("losses") or {}).get("skipped_steps") or 0),
                     error=None, objective_value=result["objective"])
