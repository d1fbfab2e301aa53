"""Train Panoptic FPN: `python tools/train.py [experiment=...] [key=value ...]` (torchrun for DDP).

Exit status: 0 when training ran to solver.max_iter; 128 + signal (SIGTERM 143, SIGINT 130) when a
signal stopped it after saving a checkpoint (continue with resume=true), or before the training
loop started or on a second signal (no checkpoint), or when it came after the training had
finished ("tools/train.py: stopped by SIGTERM after the job had finished: every output was written
(...)"); 2 on a known input error (a config key, a missing data or weights file ...: one line,
panfpn/engine/tool_errors.py); 1 on another error.

Returns ``train.objective`` (e.g. ``pq/All`` of the final evaluation) to hydra, so sweepers such
as hydra-optuna-sweeper optimise it; `-m` sweeps end with a summary (docs/experiments.md).
"""

import signal
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import FrameType

import hydra
from omegaconf import DictConfig, OmegaConf

from panfpn.engine.config.misspelt import refuse_misspelt_keys
from panfpn.engine.training.job import TrainingInterrupted, finished_training, is_main_rank, run_training_job
from panfpn.engine.training.job_signals import JobStopped, JobStoppedError
from panfpn.engine.tool_errors import in_multirun, input_errors_exit_2
from panfpn.utils.enter_exit_window import signal_when_out
from panfpn.utils.stop_signals import stop_signals_after_its_job


_SWEEP: list[DictConfig] = []  # a multirun's hydra config, once a job started: its summary on a Ctrl-C


def _after_the_job() -> AbstractContextManager:
    """A single run: a stop signal once the training has finished (hydra's and Python's end) says so
    in one line, exit 128 + signal (docs/training.md); a multirun leaves it to the sweep."""
    if not in_multirun():
        return stop_signals_after_its_job("tools/train.py")
    from hydra.core.hydra_config import HydraConfig

    _SWEEP[:] = [OmegaConf.create({"hydra": HydraConfig.get()})]
    return nullcontext()


class SweepSignal(BaseException):
    """A SIGTERM outside the jobs of a multirun (hydra's start, the sweep's checks, between two jobs,
    as a job has just finished): ends the sweep as a Ctrl-C there does (not an Exception: hydra's job
    runner catches those)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_sweep_signal(signum: int, frame: FrameType | None) -> None:
    if signal_when_out(signum, frame):  # not out of a lock's __enter__ (it would stay held): soon again
        return
    raise SweepSignal(signum)


def _summary_of_a_stopped_sweep() -> None:
    """A Ctrl-C between two jobs of a multirun: the sweep summary callback's end of the sweep, so that
    summary.json lists the job that had just finished too (the Ctrl-C may have come before hydra's
    on_job_end wrote it; measured: none written after job 0's job_status.json said done)."""
    target = _SWEEP[0].hydra.callbacks.get("sweep_summary") if _SWEEP else None
    if target is not None:  # the callback is configured
        from hydra.utils import instantiate

        for signum in (signal.SIGINT, signal.SIGTERM):  # another signal: not a traceback, not half a summary
            signal.signal(signum, signal.SIG_IGN)
        instantiate(target).on_multirun_end(_SWEEP[0])


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
@input_errors_exit_2("train")  # a known input error: one line, exit 2 (job_status.json written first)
def main(cfg: DictConfig) -> float | None:
    try:
        with _after_the_job():
            result = run_training_job(cfg)
    except JobStopped as stopped:  # while starting, or while a failure was written: no checkpoint
        if in_multirun():  # as an Exception: the sweep callback records the job, then stops the sweep
            raise JobStoppedError(stopped) from None
        print(f"training {stopped}; job_status.json says interrupted", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    if result["interrupted"]:
        stopped = TrainingInterrupted(int(result["signal"]), result["iteration"], result["checkpoint"])
        if in_multirun():  # the sweep callback records the job, then stops the sweep
            raise stopped
        print(stopped, file=sys.stderr)
        sys.exit(128 + stopped.signum)
    if is_main_rank():  # the final evaluation's table is in the log already: where things are, once
        print(finished_training(Path(str(cfg.output_dir)), result["checkpoint"], result["eval"] is not None)())
        if result["objective"] is not None:
            print(f"objective {cfg.train.objective} = {result['objective']:.4f} ({cfg.train.objective_direction})")
    return result["objective"]


if __name__ == "__main__":
    sweep = bool({"-m", "--multirun"} & set(sys.argv[1:]))
    refuse_misspelt_keys("train", sys.argv[1:])  # solver.max_itr=3: one line, exit 2, not hydra's block
    if sweep and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a job's own handler puts it back
        signal.signal(signal.SIGTERM, _raise_sweep_signal)
    try:
        main()
    except (KeyboardInterrupt, SweepSignal) as stop:  # hydra lets both through (it catches Exception)
        signum = stop.signum if isinstance(stop, SweepSignal) else signal.SIGINT
        if sweep:
            _summary_of_a_stopped_sweep()
        print(f"sweep stopped by {signal.Signals(signum).name} outside a training job (summary.json lists the jobs "
              "that ended)" if sweep else "training stopped by SIGINT before its job started (no job_status.json)",
              file=sys.stderr)
        sys.exit(128 + signum)
