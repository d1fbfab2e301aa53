"""Hydra callback (configs/config.yaml ``hydra.callbacks.sweep_summary``): a multirun keeps a
summary of its jobs in the sweep folder, refreshed after every job (so failed and interrupted
jobs are in it too) and printed at the end.

A job stopped by a signal (its job_status.json says interrupted) stops the sweep after the summary
is written, with tools/train.py's exit status 128 + signal; resume it with the same command line
plus ``resume=true`` per job folder. When a job failed, hydra's basic sweeper raises after the
last job and never calls ``on_multirun_end``: the table is then printed when the process exits
(after hydra's error), so a sweep with a failed job still ends with its table.
"""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.core.utils import JobStatus
from hydra.types import RunMode
from omegaconf import DictConfig

from panfpn.engine.sweep.summary import format_table, write_summary
from panfpn.engine.training.job import JOB_STATUS
from panfpn.utils.json_file import JSONFileError, load_json

logger = logging.getLogger("panfpn")


def _sweep_dir(config: DictConfig) -> Path | None:
    if config.hydra.mode != RunMode.MULTIRUN:
        return None
    return Path(str(config.hydra.sweep.dir))


class SweepSummary(Callback):
    """Writes summary.csv / summary.json / summary.html into the sweep folder."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table
        self._unprinted: Path | None = None  # a sweep whose table is still due (a job failed)

    def _write(self, sweep_dir: Path) -> list[dict]:
        return write_summary([sweep_dir], sweep_dir, title=f"Sweep {sweep_dir}")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        if sweep_dir is None:
            return
        self._write(sweep_dir)
        if getattr(job_return, "status", None) == JobStatus.FAILED and self.print_table and self._unprinted is None:
            self._unprinted = sweep_dir
            atexit.register(self._print_if_due)
        job_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        try:
            status = load_json(job_dir / JOB_STATUS) if (job_dir / JOB_STATUS).is_file() else {}
        except JSONFileError:
            status = {}
        if status.get("status") == "interrupted":
            self.on_multirun_end(config)
            print(f"sweep stopped: job {job_dir.name} was interrupted by signal {status.get('signal')}; "
                  f"summary in {sweep_dir}", file=sys.stderr)
            sys.exit(128 + int(status.get("signal") or 2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        if sweep_dir is None or not sweep_dir.is_dir():
            return
        rows = self._write(sweep_dir)
        if self.print_table:
            self._print(sweep_dir, rows)

    def _print(self, sweep_dir: Path, rows: list[dict]) -> None:
        from panfpn.engine.sweep.summary import objective_of

        self._unprinted = None
        objective = objective_of(rows)
        print(f"\nsweep summary ({len(rows)} job{'s' if len(rows) != 1 else ''}): {sweep_dir}/summary.html\n"
              f"{format_table(rows, objective)}", flush=True)

    def _print_if_due(self) -> None:
        """At exit: the table of a sweep that hydra ended with a failed job's error."""
        if self._unprinted is not None and self._unprinted.is_dir():
            self._print(self._unprinted, self._write(self._unprinted))
